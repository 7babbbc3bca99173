"""`sev-bench run` end to end on a tiny model: results schema, summary, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from locations import FAST_PROMPTING, REPO

from sev_bench.backends.hf import HFGenerator
from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS, VALENCES
from sev_bench.results import SAMPLE_FIELDS, load_results
from sev_bench.runner import RunRequest, run

SCHEMA = json.loads((REPO / "sev_bench/schema/results.schema.json").read_text())




def _request(tmp_path: Path, **changes) -> RunRequest:
    settings = dict(
        method=str(FAST_PROMPTING),
        model="tiny-random-qwen2",
        limit=12,
        batch_size=4,
        scorer="test-keywords",
        output_dir=str(tmp_path / "run"),
        progress=False,
        overrides=[],
    )
    settings.update(changes)
    return RunRequest(**settings)


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sev_data_dir):
    """One uninterrupted run: the replies every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    results, run_dir = run(_request(out, data_dir=str(sev_data_dir)))
    return results, run_dir


def test_results_follow_the_schema(reference_run):
    results, run_dir = reference_run
    jsonschema.validate(results, SCHEMA)
    assert load_results(run_dir) == results
    accuracy = results["metrics"]["accuracy"]
    assert accuracy["overall"]["n"] == 12
    assert sum(cell["n"] for cell in accuracy["by_valence"].values()) == 12
    assert 0 <= accuracy["overall"]["acc"] <= 1
    low, high = accuracy["overall"]["ci95"]
    assert low <= accuracy["overall"]["acc"] <= high
    spec = results["spec"]
    assert spec["model"]["dtype"] == "float32" and spec["dataset"]["split"] == "test"
    assert spec["scorer"]["id"] == "test-keywords" and len(spec["scorer"]["sha256"]) == 64
    assert spec["generation"]["max_new_tokens"] == 16 and len(spec["generation"]["chat_template_sha256"]) == 64
    assert spec["method"]["params"]["system_template"].startswith("Always reply in {emotion}.")


def test_samples_carry_prompt_reply_and_score(reference_run):
    _, run_dir = reference_run
    samples = _samples(run_dir)
    assert len(samples) == 12 and len({s["id"] for s in samples}) == 12
    for sample in samples:
        assert set(SAMPLE_FIELDS) <= set(sample)
        assert sample["messages"][0]["content"].startswith(f"Always reply in {sample['target_emotion']}.")
        assert sample["correct"] == (sample["predicted_emotion"] == sample["target_emotion"])
        assert abs(sum(sample["probs"].values()) - 1) < 1e-4


def test_summary_has_the_valence_by_emotion_table(reference_run):
    _, run_dir = reference_run
    summary = (run_dir / "summary.md").read_text()
    assert "| valence | anger | sadness | happiness | fear | surprise | disgust | all |" in summary
    assert "| positive |" in summary and "| neutral |" in summary


def test_resume_after_a_kill_loses_nothing_and_duplicates_nothing(reference_run, tmp_path, monkeypatch):
    request = _request(tmp_path)
    real = HFGenerator._generate_batch
    calls = {"n": 0}

    def killed_on_third_batch(self, prompts, interventions=()):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C / SIGINT looks like inside generate
        return real(self, prompts, interventions)

    monkeypatch.setattr(HFGenerator, "_generate_batch", killed_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(request)
    run_dir = Path(request.output_dir)
    assert not (run_dir / "results.json").exists()  # an unfinished run never looks finished
    assert len(_samples(run_dir)) == 8
    # a kill in the middle of an append leaves a torn last line
    with open(run_dir / "samples.jsonl", "a") as handle:
        handle.write('{"id": "work_test_00__neutral__anger", "compl')

    monkeypatch.setattr(HFGenerator, "_generate_batch", real)
    results, _ = run(request)
    samples = _samples(run_dir)
    assert len(samples) == 12 and len({s["id"] for s in samples}) == 12
    expected = {s["id"]: s["completion"] for s in _samples(reference_run[1])}
    assert {s["id"]: s["completion"] for s in samples} == expected
    assert results["timings"]["samples_reused"] == 8
    assert results["metrics"] == reference_run[0]["metrics"]


def test_rerunning_a_finished_run_reuses_every_sample(reference_run, sev_data_dir, monkeypatch):
    _, run_dir = reference_run

    def no_generation(self, prompts, interventions=()):
        raise AssertionError("a finished run must not generate again")

    monkeypatch.setattr(HFGenerator, "_generate_batch", no_generation)
    results, _ = run(_request(run_dir.parent, data_dir=str(sev_data_dir)))
    assert results == reference_run[0]


def test_a_kill_after_the_last_reply_but_before_results_is_finished_on_rerun(reference_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(reference_run[1], copy)
    (copy / "results.json").unlink()
    results, _ = run(_request(tmp_path))
    assert results["timings"]["samples_reused"] == 12
    assert results["metrics"] == reference_run[0]["metrics"]
    assert results["spec"]["model"]["revision"] == "tiny-v1"


def test_a_different_run_in_the_same_dir_is_refused(reference_run, sev_data_dir):
    _, run_dir = reference_run
    with pytest.raises(UserError, match="holds a different run.*method"):
        run(_request(run_dir.parent, data_dir=str(sev_data_dir), overrides=["system_template=Be {emotion}."]))


def test_none_generates_once_per_chat_and_shares_the_reply(tmp_path, monkeypatch):
    seen = []
    real = HFGenerator._generate_batch

    def counting(self, prompts, interventions=()):
        seen.extend(prompts)
        return real(self, prompts, interventions)

    monkeypatch.setattr(HFGenerator, "_generate_batch", counting)
    none_yaml = tmp_path / "none.yaml"
    none_yaml.write_text("method: none\ngeneration:\n  max_new_tokens: 16\n")
    results, run_dir = run(_request(tmp_path, method=str(none_yaml), limit=18))
    assert len(seen) == 3  # one skeleton: 3 valences, the same chat for all 6 targets
    samples = _samples(run_dir)
    by_valence = {}
    for sample in samples:
        by_valence.setdefault(sample["valence"], set()).add(sample["completion"])
    assert all(len(replies) == 1 for replies in by_valence.values())
    assert results["metrics"]["accuracy"]["overall"]["n"] == 18


def test_emotion_and_valence_selection(tmp_path):
    results, run_dir = run(_request(tmp_path, emotions=["fear", "anger"], valences=["negative"], limit=None))
    samples = _samples(run_dir)
    assert len(samples) == 160 * 2 and {s["valence"] for s in samples} == {"negative"}
    assert set(results["metrics"]["accuracy"]["by_emotion"]) == {"anger", "fear"}


def test_limit_interleaves_themes(sev_data_dir):
    from sev_bench.data import load_sev, select_rows

    test = load_sev(sev_data_dir)["test"]
    rows = select_rows(test, list(EMOTIONS), list(VALENCES), 144)
    assert len({row["theme"] for row in rows}) == 8 and len({row["skeleton_id"] for row in rows}) == 8
    assert {(row["valence"], row["target_emotion"]) for row in rows} == {(v, e) for v in VALENCES for e in EMOTIONS}
    assert rows[0]["id"] == "work_test_00__positive__anger"
    assert len(select_rows(test, list(EMOTIONS), list(VALENCES), None)) == 2880


def test_shards_on_one_dir_add_up_to_the_unsharded_run(tmp_path):
    # 5 skeletons (2 emotions x 3 valences each); the shard hash puts 4 in one shard and 1 in the other
    selection = {"emotions": ["anger", "fear"], "limit": 30}
    whole, whole_dir = run(_request(tmp_path / "whole", **selection))
    first, run_dir = run(_request(tmp_path / "sharded", shard=(0, 2), **selection))
    assert first is None and not (run_dir / "results.json").exists()
    shard_zero = _samples_of(run_dir / "samples.shard-0-of-2.jsonl")
    assert 0 < len(shard_zero) < 30
    results, _ = run(_request(tmp_path / "sharded", shard=(1, 2), **selection))
    assert not list(run_dir.glob("samples.shard-*"))  # merged into samples.jsonl
    assert not (run_dir / ".finish.lock").exists()
    samples = _samples(run_dir)
    assert len(samples) == 30
    assert {s["id"]: s["completion"] for s in samples} == {s["id"]: s["completion"] for s in _samples(whole_dir)}
    assert results["metrics"] == whole["metrics"]
    zero_skeletons = {s["skeleton_id"] for s in shard_zero}
    assert not zero_skeletons & {s["skeleton_id"] for s in samples if s not in shard_zero}


def _samples_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_result_files_get_the_usual_permissions(reference_run):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "summary.md", "run.json"):
        mode = stat.S_IMODE((reference_run[1] / name).stat().st_mode)
        assert mode == 0o666 & ~umask, name


def test_fluency_is_recorded_and_backfilled_into_older_runs(reference_run, sev_data_dir, tmp_path, monkeypatch):
    import shutil

    results, run_dir = reference_run
    samples = _samples(run_dir)
    assert all(isinstance(s["fluency"]["fluent"], bool) for s in samples)
    fluency = results["metrics"]["fluency"]
    assert fluency["n"] == 12 and fluency["fluent_share"] == sum(s["fluency"]["fluent"] for s in samples) / 12
    fluent = results["metrics"]["accuracy_fluent"]["overall"]
    assert fluent["correct"] == sum(s["correct"] and s["fluency"]["fluent"] for s in samples)

    # A run made before the fluency guard: no fluency anywhere. Rerunning it adds the records and metrics
    # without generating again, and keeps how the replies were made.
    old = tmp_path / "run"
    shutil.copytree(run_dir, old)
    stripped = [{k: v for k, v in s.items() if k != "fluency"} for s in samples]
    (old / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stripped))
    old_results = json.loads((old / "results.json").read_text())
    for key in ("fluency", "accuracy_fluent"):
        del old_results["metrics"][key]
    (old / "results.json").write_text(json.dumps(old_results))

    def no_generation(self, prompts, interventions=()):
        raise AssertionError("backfilling fluency must not generate")

    monkeypatch.setattr(HFGenerator, "_generate_batch", no_generation)
    backfilled, _ = run(_request(tmp_path, data_dir=str(sev_data_dir)))
    assert backfilled["metrics"]["fluency"] == fluency
    assert backfilled["timings"] == old_results["timings"] and "fluency_backfill" in backfilled
    assert {s["id"]: s["fluency"] for s in _samples(old)} == {s["id"]: s["fluency"] for s in samples}
