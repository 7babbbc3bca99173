"""The method-neutral fluency gate end to end: per-model calibration files, what results record about the
gate, and `sev-bench fluency regate` on a finished run made under the old, method-conditioned measure."""

from __future__ import annotations

import json

import pytest
from locations import TEST_DATA

from sev_bench import fluency_calibration
from sev_bench.cli import main
from sev_bench.data import load_sev
from sev_bench.fluency import DEFAULT_THRESHOLDS, fluency_records, reply_perplexities, text_stats
from sev_bench.fluency_calibration import gate_for, write_calibration
from sev_bench.models import load_model
from sev_bench.prompts import NEUTRAL_SYSTEM, chat

RUN = ["--model", "tiny-random-qwen2", "--limit", "12", "--scorer", "test-keywords", "--dtype", "float32"]
RUN += ["--device", "cpu", "--threads", "1", "--no-progress"]


def _record(model_id: str, revision: str, bound: float) -> dict:
    return {
        "format": fluency_calibration.FORMAT,
        "model": {"id": model_id, "revision": revision},
        "max_perplexity": bound,
        "rule": "test",
    }


def test_a_model_without_calibration_runs_with_the_default_bound_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(fluency_calibration, "CALIBRATION_DIR", tmp_path)
    thresholds, info = gate_for({"id": "some-model", "revision": "abc"})
    assert thresholds == DEFAULT_THRESHOLDS and info["calibrated"] is False and "some-model" in info["note"]
    write_calibration(_record("some-model", "abc", 12.5), tmp_path)
    thresholds, info = gate_for({"id": "some-model", "revision": "abc"})
    assert thresholds.max_perplexity == 12.5 and info["calibrated"] is True
    assert info["system_prompt"] == NEUTRAL_SYSTEM and len(info["sha256"]) == 64
    thresholds, info = gate_for({"id": "some-model", "revision": "other"})  # weights changed: not this bound
    assert thresholds == DEFAULT_THRESHOLDS and info["calibrated"] is False and "revision" in info["note"]


def test_the_shipped_calibrations_are_well_formed():
    files = sorted(fluency_calibration.CALIBRATION_DIR.glob("*.json"))
    for path in files:
        record = json.loads(path.read_text())
        assert record["format"] == fluency_calibration.FORMAT
        fluent_high = record["perplexity"]["fluent"][f"p{record['fluent_percentile']}"]
        broken_low = min(v[f"p{record['broken_percentile']}"] for k, v in record["perplexity"].items() if k != "fluent")
        assert fluent_high < record["max_perplexity"] < broken_low
        assert record["max_perplexity"] == pytest.approx((fluent_high * broken_low) ** 0.5, abs=0.01)


def test_a_run_records_its_gate_and_calibration_refuses_other_runs(tmp_path, capsys):
    out = tmp_path / "prompting"
    assert main(["run", "--method", "prompting", *RUN, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["fluency"]["perplexity_chat"] == "neutral"
    assert results["spec"]["fluency"]["calibrated"] is False  # no bound for a tiny random model
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["fluency"]["perplexity_chat"] == "neutral" for s in samples)
    capsys.readouterr()
    # calibration takes only a `none` run on the dev split
    assert main(["fluency", "calibrate", str(out), "--out-dir", str(tmp_path / "cal")]) == 2
    assert "need none on dev" in capsys.readouterr().err


def test_regate_measures_old_records_under_the_neutral_chat(tmp_path, capsys):
    out = tmp_path / "prompting"
    assert main(["run", "--method", "prompting", *RUN, "--output-dir", str(out)]) == 0
    # Make it look like a run from before the gate was method-neutral: perplexity under its own chat.
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    loaded = load_model("tiny-random-qwen2", dtype="float32", device="cpu")
    own = reply_perplexities(loaded, [s["messages"] for s in samples], [s["completion"] for s in samples])
    for sample, perplexity in zip(samples, own):
        sample["fluency"] = {k: v for k, v in sample["fluency"].items() if k != "perplexity_chat"}
        sample["fluency"]["perplexity"] = perplexity
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    capsys.readouterr()

    assert main(["fluency", "regate", str(out), "--output-dir", str(tmp_path / "regated")]) == 0
    assert "verdicts changed" in capsys.readouterr().out
    regated = [json.loads(line) for line in (tmp_path / "regated" / "samples.jsonl").read_text().splitlines()]
    results = json.loads((tmp_path / "regated" / "results.json").read_text())
    assert 0 < results["regate"]["replies_measured"] <= len(samples)
    changed = sum(a["fluency"]["fluent"] != b["fluency"]["fluent"] for a, b in zip(regated, samples))
    assert results["regate"]["verdicts_changed"] == changed
    for before, after in zip(samples, regated):
        assert after["completion"] == before["completion"] and after["correct"] == before["correct"]
        neutral = chat(NEUTRAL_SYSTEM, *before["messages"][1]["content"].split("\n", 1))
        (expected,) = reply_perplexities(loaded, [neutral], [before["completion"]])
        assert after["fluency"]["perplexity"] == pytest.approx(expected, rel=1e-5)
        assert after["fluency"]["perplexity_chat"] == "neutral"
    assert any(a["fluency"]["perplexity"] != b["fluency"]["perplexity"] for a, b in zip(regated, samples))
    assert main(["fluency", "regate", str(out), "--output-dir", str(out)]) == 2  # never in place


# ---------------------------------------------------------------- real replies of both embedded models

REAL_FILE = TEST_DATA / "fluency_replies.jsonl"
REAL = [json.loads(line) for line in REAL_FILE.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("reply", REAL, ids=[f"{r['model']}-{r['kind']}-{i}" for i, r in enumerate(REAL)])
def test_text_checks_on_real_replies(reply):
    """Real replies of SmolLM2-135M and Qwen2.5-Coder-1.5B from published runs, sorted by hand into normal,
    looped (a word loop) and character-looped ("f**@**@**@...", "supomomomom...")."""
    stats = text_stats(reply["completion"])
    if reply["kind"] == "normal":
        assert not stats["repeated_4gram"] and not stats["char_loop"]
    elif reply["kind"] == "looped":
        assert stats["repeated_4gram"]
    else:
        assert stats["char_loop"]


@pytest.mark.slow
def test_the_calibrated_gate_on_real_smollm2_replies(sev_data_dir):
    """SmolLM2's own replies under its calibrated gate and the neutral chat: the normal ones pass, the
    looped ones fail, whatever their perplexity (loops are easy to predict)."""
    rows = {row["id"]: row for row in load_sev(sev_data_dir)["test"]}
    replies = [r for r in REAL if r["model"] == "smollm2-135m"]
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    thresholds, info = gate_for({"id": "smollm2-135m", "revision": loaded.revision})
    assert info["calibrated"] is True and thresholds.max_perplexity == pytest.approx(93.27)
    records = fluency_records(loaded, [rows[r["id"]] for r in replies], [r["completion"] for r in replies], thresholds)
    for reply, record in zip(replies, records):
        assert record["fluent"] is (reply["kind"] == "normal"), (reply["completion"][:60], record)
    normal = [rec["perplexity"] for rec, rep in zip(records, replies) if rep["kind"] == "normal"]
    assert max(normal) < thresholds.max_perplexity
