"""Issue 15, one test (or a few) per defect: locked run dirs, finite parameters, empty replies, run.json
only for runs that passed their checks, damaged samples recovered, clean one-line failures, cheap checks
first, redacted judge errors, an endpoint-keyed judge cache, sealed artifacts, samples required on the
board. The SIGKILL tests over many runs are in test_fault_injection.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic_runs import make_samples, write_run
from test_judge import SECRET, FakeServer
from test_run import FAST_PROMPTING, _request, _samples

import sev_bench.scoring
from sev_bench.atomic import write_json_atomic
from sev_bench.backends.hf import HFGenerator
from sev_bench.cli import build_parser, main
from sev_bench.errors import UserError
from sev_bench.leaderboard import Refused, validate_run
from sev_bench.methods import resolve_method
from sev_bench.results import RunDir, load_results
from sev_bench.runner import run
from sev_bench.scoring import load_scorer

RUN_FLAGS = [
    "--method", str(FAST_PROMPTING), "--model", "tiny-random-qwen2", "--limit", "12", "--batch-size", "4",
    "--scorer", "test-keywords", "--threads", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sev_data_dir):
    """One uninterrupted 12-row run (results, dir); tests work on copies."""
    out = tmp_path_factory.mktemp("finished")
    return run(_request(out, data_dir=str(sev_data_dir)))


def _copy(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def _one_line_error(capsys) -> str:
    """The error line (after any progress notes on stderr); no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("sev-bench: error: "), err
    return last


# -- 1. one writer per run dir ---------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_a_run_holds_the_dir(tmp_path, capsys):
    holder = RunDir(tmp_path / "run")
    holder.lock()
    try:
        assert main(["run", *RUN_FLAGS, "--output-dir", str(tmp_path / "run")]) == 2
        assert "is in use by another sev-bench run" in _one_line_error(capsys)
        assert not (tmp_path / "run" / "samples.jsonl").exists()
    finally:
        holder.release()
    assert main(["run", *RUN_FLAGS, "--output-dir", str(tmp_path / "run")]) == 0
    assert len(_samples(tmp_path / "run")) == 12
    assert not list((tmp_path / "run").glob(".*"))  # no lock (or temporary) file left in a finished run


def test_shards_share_the_dir_but_each_shard_has_one_writer(tmp_path, capsys):
    flags = [*RUN_FLAGS, "--emotions", "anger", "fear", "--limit", "30", "--output-dir", str(tmp_path / "run")]
    shard_zero = RunDir(tmp_path / "run")
    shard_zero.lock((0, 2))
    try:
        assert main(["run", *flags, "--shard", "0/2"]) == 2
        assert "shard 0/2 of --output-dir" in _one_line_error(capsys)
        assert main(["run", *flags]) == 2  # a whole run needs the dir alone
        assert "in use by another sev-bench run" in _one_line_error(capsys)
        # 5 skeletons, split 4 / 1: shard 1 leaves work to shard 0 (else it would wait to merge)
        assert main(["run", *flags, "--shard", "1/2"]) == 0
    finally:
        shard_zero.release()


def test_compare_check_and_rescore_refuse_an_id_written_twice(tmp_path, capsys):
    good = write_run(tmp_path / "good", make_samples())
    doubled = write_run(tmp_path / "doubled", make_samples())
    lines = (doubled / "samples.jsonl").read_text().splitlines(keepends=True)
    (doubled / "samples.jsonl").write_text("".join(lines + lines[:1]))
    assert main(["compare", str(good), str(doubled)]) == 2
    assert "is there twice" in _one_line_error(capsys)
    assert main(["check", str(doubled), "--baseline", str(good), "--tolerance", "0.05"]) == 2
    assert "is there twice" in _one_line_error(capsys)
    assert main(["rescore", str(doubled), "--scorer", "test-keywords", "--no-progress"]) == 2
    assert "twice" in _one_line_error(capsys)


# -- 2. finite parameters, strict JSON -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_parameters_are_refused(value):
    with pytest.raises(UserError, match="finite"):
        resolve_method("steering", [f"alpha={value}"])
    with pytest.raises(UserError, match="finite"):
        resolve_method("circuit", [f"scale={value}"])


def test_non_finite_yaml_values_are_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("method: steering\nparams:\n  alpha: .nan\n")
    with pytest.raises(UserError, match="finite"):
        resolve_method(str(params))
    generation = tmp_path / "generation.yaml"
    generation.write_text("method: prompting\ngeneration:\n  repetition_penalty: .inf\n")
    with pytest.raises(UserError, match="finite"):
        resolve_method(str(generation))


def test_non_finite_command_line_numbers_are_refused(tmp_path, capsys):
    with pytest.raises(UserError, match="finite"):
        build_parser().parse_args(["score", "in.jsonl", "-o", "out.jsonl", "--judge-timeout", "inf"])
    steering = ["--method", "steering", "--model", "tiny-random-qwen2", "--scorer", "test-keywords"]
    assert main(["run", *steering, "--set", "alpha=nan", "--output-dir", str(tmp_path / "s")]) == 2
    assert "parameter alpha=nan: expected a finite number" in _one_line_error(capsys)
    assert not (tmp_path / "s").exists()


def test_results_are_strict_json(tmp_path, finished_run):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"acc": float("nan")})
    assert not (tmp_path / "x.json").exists()
    copy = _copy(finished_run[1], tmp_path / "run")
    text = (copy / "results.json").read_text()
    (copy / "results.json").write_text(text.replace('"seed": 1234', '"seed": NaN', 1))
    with pytest.raises(UserError, match="NaN is not valid JSON"):
        load_results(copy)
    board = write_run(tmp_path / "board" / "m" / "run", make_samples())
    results = json.loads((board / "results.json").read_text())
    results["metrics"]["accuracy"]["overall"]["acc"] = float("nan")
    (board / "results.json").write_text(json.dumps(results))
    with pytest.raises(Refused, match="not valid JSON"):
        validate_run(board)


# -- 3. an empty reply expresses no emotion --------------------------------------------------------------


def test_an_empty_reply_is_none_and_never_correct():
    scorer = load_scorer("test-keywords")
    results = scorer.score(["", "  \n\t", "I am so angry"], ["anger", "fear", "anger"])
    for result in results[:2]:
        assert result["predicted_emotion"] == "none" and result["correct"] is False
        assert result["probs"]["none"] == 1.0 and sum(result["probs"].values()) == 1.0
    assert results[2]["correct"] is True


def test_score_counts_empty_texts(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    rows = [{"text": "", "target_emotion": "anger"}, {"text": "so angry", "target_emotion": "anger"}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["score", str(source), "-o", str(tmp_path / "out.jsonl"), "--scorer", "test-keywords"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["empty"] == 1 and summary["correct"] == 1


def test_an_empty_reply_never_reaches_the_judge(tmp_path):
    server = FakeServer()
    try:
        options = {"judge_url": server.url, "judge_model": "m", "judge_cache_dir": str(tmp_path / "cache")}
        judge = load_scorer("judge", options=options)
        results = judge.score(["", "So much anger!"], ["anger", "anger"])
        assert results[0]["predicted_emotion"] == "none" and results[0]["correct"] is False
        assert results[1]["correct"] is True and len(server.requests) == 1
        judge.close()
    finally:
        server.close()


def test_runs_count_empty_replies(tmp_path, monkeypatch):
    monkeypatch.setattr(HFGenerator, "_generate_batch", lambda self, prompts, interventions=(): [" "] * len(prompts))
    results, run_dir = run(_request(tmp_path))
    metrics = results["metrics"]
    assert metrics["empty_replies"] == 12 and metrics["accuracy"]["overall"]["correct"] == 0
    assert metrics["predicted_share"]["none"] == 1.0
    assert "empty replies: 12 of 12" in (run_dir / "summary.md").read_text()


# -- 4. run.json only once the run has passed its checks and loaded its model ----------------------------


def test_a_run_that_fails_its_checks_leaves_the_dir_free(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "run")]
    for bad in (["--dtype", "int3"], ["--model", "tiny-random-qwen3"], ["--model", str(tmp_path / "no-model")],
                ["--device", "cuda:7"]):  # fmt: skip
        flags = RUN_FLAGS + bad  # argparse: the later flag wins
        assert main(["run", *flags, *out]) == 2, bad
        _one_line_error(capsys)
        assert not (tmp_path / "run" / "run.json").exists(), bad
    assert main(["run", *RUN_FLAGS, *out]) == 0


def test_a_steering_run_with_bad_parameters_leaves_the_dir_free(tmp_path, capsys):
    steering = ["--method", "steering", "--model", "tiny-random-qwen2", "--limit", "6", "--scorer", "test-keywords"]
    steering += ["--no-progress", "--threads", "1", "--set", "discovery_limit=48", "--output-dir", str(tmp_path / "r")]
    assert main(["run", *steering, "--set", "layers=50-90"]) == 2
    assert capsys.readouterr().err.strip() == "sev-bench: error: layers='50-90': this model has layers 0..3"
    assert not (tmp_path / "r" / "run.json").exists()
    assert main(["run", *steering, "--set", f"directions={tmp_path / 'no-directions'}"]) == 2
    assert "no metadata.json" in _one_line_error(capsys)
    assert not (tmp_path / "r" / "run.json").exists()
    assert main(["run", *steering, "--set", "layers=0-1"]) == 0


# -- 5. a damaged samples.jsonl: valid samples kept, the rest set aside ----------------------------------


def test_resume_keeps_valid_samples_and_sets_damaged_lines_aside(finished_run, tmp_path, capsys):
    results, source = finished_run
    copy = _copy(source, tmp_path / "run")
    (copy / "results.json").unlink()
    lines = (copy / "samples.jsonl").read_text().splitlines(keepends=True)
    damaged = ["not json at all\n", '{"no_id": 1}\n', "[1, 2]\n", lines[5]]
    # line 3 is replaced by garbage (its reply is made again); the rest comes after it, one line twice
    (copy / "samples.jsonl").write_text("".join(lines[:2] + damaged[:3] + lines[3:6] + damaged[3:] + lines[6:]))
    resumed, _ = run(_request(tmp_path))
    err = capsys.readouterr().err
    assert "4 damaged line(s)" in err and "samples.damaged.jsonl" in err and "11 valid sample(s) kept" in err
    assert (copy / "samples.damaged.jsonl").read_text() == "".join(damaged)
    assert resumed["timings"]["samples_reused"] == 11
    assert sorted(_samples(copy), key=lambda s: s["id"]) == sorted(_samples(source), key=lambda s: s["id"])
    assert resumed["metrics"] == results["metrics"]


def test_samples_without_messages_are_not_damage(finished_run, tmp_path, capsys):
    """The leaderboard's copies of runs drop `messages`: resuming into one keeps every sample."""
    copy = _copy(finished_run[1], tmp_path / "run")
    stripped = [{k: v for k, v in sample.items() if k != "messages"} for sample in _samples(copy)]
    (copy / "samples.jsonl").write_text("".join(json.dumps(sample) + "\n" for sample in stripped))
    results, _ = run(_request(tmp_path))
    assert "damaged" not in capsys.readouterr().err and not (copy / "samples.damaged.jsonl").exists()
    assert results == finished_run[0]


# -- 6. check on a results file without metrics ----------------------------------------------------------


def test_check_on_results_without_metrics_is_a_one_line_error(tmp_path, capsys):
    good = write_run(tmp_path / "good", make_samples())
    broken = write_run(tmp_path / "broken", make_samples())
    results = json.loads((broken / "results.json").read_text())
    del results["metrics"]
    (broken / "results.json").write_text(json.dumps(results))
    for run_path, baseline in ((broken, good), (good, broken)):
        assert main(["check", str(run_path), "--baseline", str(baseline), "--tolerance", "0.05"]) == 2
        assert "missing field metrics" in _one_line_error(capsys)


# -- 7. cheap checks before the scorer loads -------------------------------------------------------------


def test_cheap_mistakes_fail_before_the_scorer_loads(finished_run, tmp_path, monkeypatch):
    def no_scorer(*args, **kwargs):
        raise AssertionError("the scorer loaded before a cheap check failed")

    monkeypatch.setattr(sev_bench.scoring, "load_scorer", no_scorer)
    with pytest.raises(UserError, match="not an alias"):
        run(_request(tmp_path, model="smollm2-136m"))
    with pytest.raises(UserError, match="holds a different run.*method"):
        run(_request(finished_run[1].parent, overrides=["system_template=Be {emotion}."]))
    holder = RunDir(tmp_path / "taken")
    holder.lock()
    try:
        with pytest.raises(UserError, match="in use"):
            run(_request(tmp_path, output_dir=str(tmp_path / "taken")))
    finally:
        holder.release()


# -- 8, 9. judge: redacted errors, a cache keyed on the endpoint -----------------------------------------


def test_judge_errors_never_carry_the_key(tmp_path, monkeypatch, capsys):
    """An endpoint that echoes the request headers in a 400 body (some proxies do)."""
    monkeypatch.setenv("SEV_BENCH_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
    server = FakeServer()

    def echo(body, n):
        return 400, f"<raw>invalid request; Authorization: {server.requests[n - 1]['headers']['Authorization']}"

    server.behaviour = echo
    try:
        source = tmp_path / "in.jsonl"
        source.write_text(json.dumps({"text": "so angry", "target_emotion": "anger"}) + "\n")
        flags = ["--scorer", "judge", "--judge-url", server.url, "--judge-model", "m"]
        assert main(["score", str(source), "-o", str(tmp_path / "out.jsonl"), *flags]) == 2
        err = _one_line_error(capsys)
        assert "HTTP 400" in err and "Bearer [REDACTED]" in err and SECRET not in err

        options = {"judge_url": server.url, "judge_model": "m", "judge_cache_dir": str(tmp_path / "c")}
        judge = load_scorer("judge", options=options)
        (result,) = judge.score(["so angry"], ["anger"])
        assert result["correct"] is None and "REDACTED" in result["score_error"]
        assert SECRET not in json.dumps(result) and SECRET not in json.dumps(judge.info())
        server.behaviour = lambda body, n: (400, f"<raw>bad key {SECRET} for user:pw@host")  # the bare key
        (result,) = judge.score(["so sad"], ["anger"])
        assert SECRET not in result["score_error"] and "[REDACTED]" in result["score_error"]
        with pytest.raises(UserError) as caught:
            judge.check_failures()
        assert SECRET not in str(caught.value)
        judge.close()
    finally:
        server.close()
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # it was sent, though


def test_judge_cache_is_keyed_on_the_endpoint(tmp_path):
    first, second = FakeServer(), FakeServer()
    cache = str(tmp_path / "cache")
    try:
        judge_a = load_scorer("judge", options={"judge_url": first.url, "judge_model": "m", "judge_cache_dir": cache})
        assert judge_a.score(["So much anger!"], ["anger"])[0]["correct"] is True
        # the same model name behind another endpoint: its verdicts are its own
        second.behaviour = lambda body, n: (200, json.dumps({"match": 0, "reason": "no"}))
        options = {"judge_url": second.url, "judge_model": "m", "judge_cache_dir": cache}
        judge_b = load_scorer("judge", options=options)
        assert judge_b.score(["So much anger!"], ["anger"])[0]["correct"] is False
        assert len(second.requests) == 1 and judge_b.cache_hits == 0
        assert judge_a.sha256 != judge_b.sha256
        # a dead endpoint is not answered from another endpoint's verdicts
        dead = {"judge_url": "http://127.0.0.1:9/v1", "judge_model": "m", "judge_cache_dir": cache,
                "judge_max_retries": 0, "judge_timeout": 1.0, "judge_max_failure_rate": 1.0}  # fmt: skip
        assert load_scorer("judge", options=dead).score(["So much anger!"], ["anger"])[0]["correct"] is None
        # and the same endpoint again answers from the cache
        again = load_scorer("judge", options={"judge_url": first.url, "judge_model": "m", "judge_cache_dir": cache})
        assert again.score(["So much anger!"], ["anger"])[0]["correct"] is True and again.cache_hits == 1
        for judge in (judge_a, judge_b, again):
            judge.close()
    finally:
        first.close()
        second.close()


# -- 10. artifact metadata is sealed with the tensors ----------------------------------------------------


def test_edited_artifact_metadata_is_refused(tmp_path, sev_data_dir):
    from sev_bench.discovery.directions import discover_for_model, load_directions

    directions, _ = discover_for_model(
        "tiny-random-qwen2", limit=48, output_dir=str(tmp_path / "d"), data_dir=str(sev_data_dir), progress=False
    )
    assert load_directions(tmp_path / "d").sha256 == directions.sha256
    meta_path = tmp_path / "d" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata["model"]["id"] = "meta-llama/Llama-3.2-3B-Instruct"  # tensors untouched, only the claim changed
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(UserError, match="does not match the artifact's sha256"):
        load_directions(tmp_path / "d")
    del metadata["sha256"]  # an unsealed artifact (or one with the seal removed) is refused as well
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(UserError, match="does not match the artifact's sha256"):
        load_directions(tmp_path / "d")


# -- 11. the board ranks only runs with samples ----------------------------------------------------------


def test_a_run_without_samples_is_refused_by_the_board(tmp_path):
    run_dir = write_run(tmp_path / "board" / "m" / "run", make_samples())
    validate_run(run_dir)
    (run_dir / "samples.jsonl").unlink()
    with pytest.raises(Refused, match="no samples.jsonl"):
        validate_run(run_dir)
