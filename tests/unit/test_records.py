"""The typed records of a run (`sev_bench.records`): the files they write keep today's keys and order, and the
results document they make passes the results schema; so does a real tiny-model run through the CLI."""

from __future__ import annotations

import json

from locations import FAST_PROMPTING

from sev_bench.cli import main
from sev_bench.metrics import empty_replies, fluent_accuracy, grouped_accuracy, predicted_share
from sev_bench.prompts import EMOTIONS
from sev_bench.records import RESULTS_KEYS, RunResults, SampleRecord, Score, results_json, sample_json
from sev_bench.results import SAMPLE_FIELDS, RunDir, load_results, read_sample_file
from sev_bench.results_schema import schema_problem

ROWS = [
    {
        "id": f"work_test_00__{valence}__{emotion}",
        "skeleton_id": "work_test_00",
        "theme": "work",
        "valence": valence,
        "target_emotion": emotion,
    }
    for valence in ("positive", "negative")
    for emotion in ("anger", "fear")
]
MESSAGES = [{"role": "system", "content": "Always reply in anger."}, {"role": "user", "content": "Hello"}]
FLUENCY = {"perplexity": 12.5, "repeated_4gram": False, "fluent": True}


def _score(target: str, predicted: str) -> Score:
    probs = {emotion: float(emotion == predicted) for emotion in EMOTIONS}
    return Score.from_json({"predicted_emotion": predicted, "probs": probs, "correct": predicted == target})


def _records() -> list[SampleRecord]:
    return [
        SampleRecord.of_row(row, MESSAGES, f"reply {i}", _score(row["target_emotion"], "anger"), FLUENCY)
        for i, row in enumerate(ROWS)
    ]


def _results(samples: list[dict]) -> RunResults:
    spec = {
        "method": {
            "name": "prompting",
            "implementation": "prompting",
            "kind": "prompt",
            "params": {},
            "generation": {"do_sample": False, "max_new_tokens": 16},
            "config_hash": "0" * 16,
        },
        "model": {"id": "tiny-random-qwen2", "revision": "tiny-v1", "dtype": "float32"},
        "backend": {"name": "hf", "batch_size": 4},
        "generation": {"do_sample": False, "max_new_tokens": 16},
        "dataset": {
            "name": "SEV",
            "commit": "c" * 40,
            "split": "test",
            "sha256": "d" * 64,
            "selection": {"emotions": ["anger", "fear"], "valences": ["positive", "negative"], "limit": None},
            "n": len(samples),
        },
        "scorer": {"id": "test-keywords", "sha256": "e" * 64, "labels": list(EMOTIONS)},
        "seed": 1234,
        "hardware": {"device": "cpu"},
        "software": {},
        "git": {"commit": None, "dirty": None},
    }
    metrics = {
        "accuracy": grouped_accuracy(samples),
        "predicted_share": predicted_share(samples),
        "empty_replies": empty_replies(samples),
        "accuracy_fluent": fluent_accuracy(samples),
    }
    timings = {"generation_s": 1.0, "scoring_s": 0.5, "total_s": 2.0}
    return RunResults(created="2026-01-01T00:00:00+00:00", spec=spec, metrics=metrics, timings=timings)


def test_a_score_says_whether_it_is_scored():
    scored = _score("anger", "fear")
    assert scored.is_scored and scored.correct is False
    unscored = Score.unscored("judge unreachable", EMOTIONS)
    assert not unscored.is_scored
    assert unscored.to_json() == {
        "predicted_emotion": None,
        "probs": dict.fromkeys(EMOTIONS, 0.0),
        "correct": None,
        "score_error": "judge unreachable",
    }
    # a scorer's own fields follow the three common ones, in the scorer's order
    judged = {"predicted_emotion": "anger", "probs": {"anger": 1.0}, "correct": True, "judge_reason": "shouts"}
    assert list(Score.from_json(judged).to_json()) == list(judged)


def test_a_sample_line_has_todays_keys_in_order():
    line = sample_json(_records()[0])
    assert list(line) == [*SAMPLE_FIELDS, "fluency"]
    assert line["messages"] == MESSAGES and line["fluency"] == FLUENCY
    as_read = json.loads(json.dumps(line))
    assert sample_json(as_read) is as_read  # a sample read back from a run dir is written as it is


def test_results_keep_their_order_and_later_sections():
    document = {**_results([sample_json(r) for r in _records()]).to_json(), "rescore": {"from": "x"}}
    assert list(document)[: len(RESULTS_KEYS)] == list(RESULTS_KEYS)
    again = RunResults.from_json(document)
    assert again.sections == {"rescore": {"from": "x"}}
    assert json.dumps(results_json(again)) == json.dumps(document)


def test_written_records_read_back_and_pass_the_schema(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.lock()
    try:
        records = _records()
        run_dir.append(records)
        valid, damaged, torn = read_sample_file(run_dir.samples_path)
        assert not damaged and not torn
        samples = [sample for sample, _ in valid]
        assert samples == [sample_json(r) for r in records]
        results = _results(samples)
        assert schema_problem(results.to_json()) is None
        run_dir.finish(samples, results, "summary\n")
    finally:
        run_dir.release()
    assert load_results(run_dir.path) == results.to_json()
    text = (run_dir.path / "results.json").read_text()
    assert text == json.dumps(results.to_json(), indent=2, ensure_ascii=False) + "\n"


def test_an_incomplete_results_document_fails_the_schema():
    results = _results([sample_json(r) for r in _records()]).to_json()
    del results["spec"]["git"]
    assert schema_problem(results) == "missing field spec.git"


def test_a_tiny_model_run_through_the_cli_passes_the_schema(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", str(FAST_PROMPTING), "--limit", "6", "--batch-size", "3"]
    argv += ["--model", "tiny-random-qwen2", "--scorer", "test-keywords", "--no-progress", "--output-dir", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert schema_problem(results) is None
    assert list(results)[: len(RESULTS_KEYS)] == list(RESULTS_KEYS)
    assert results["spec"]["method"]["kind"] == "prompt"
    assert results["spec"]["backend"] == {"name": "hf", "batch_size": 3}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(list(s) == [*SAMPLE_FIELDS, "fluency"] for s in samples)
