"""`sev-bench rescore`: saved replies scored again, a new valid run dir, both scorers recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_run import _request

from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.leaderboard import validate_run
from sev_bench.prompts import EMOTIONS
from sev_bench.rescore import rescore
from sev_bench.runner import run
from sev_bench.scoring.base import Scorer


class AlwaysAnger(Scorer):
    name = "test-always-anger"
    description = "test only"
    _sha256 = "a" * 64

    @classmethod
    def load(cls, data_dir=None, verbose=True):
        return cls()

    def predict_proba(self, texts):
        probs = np.full((len(texts), len(EMOTIONS)), 0.02)
        probs[:, EMOTIONS.index("anger")] = 0.9
        return probs


class FailsOnSome(AlwaysAnger):
    name = "test-fails"

    def score(self, texts, targets):
        scored = super().score(texts, targets)
        scored[0] = {"predicted_emotion": None, "probs": None, "correct": None, "score_error": "timeout"}
        return scored


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sev_data_dir):
    out = tmp_path_factory.mktemp("finished")
    return run(_request(out, data_dir=str(sev_data_dir), limit=18))


def _samples(path):
    return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]


def test_rescore_writes_a_valid_run_that_records_both_scorers(finished, tmp_path):
    original, run_dir = finished
    before = (run_dir / "results.json").read_bytes()
    results, out = rescore(run_dir, AlwaysAnger(), tmp_path / "rescored", progress=False)
    assert (run_dir / "results.json").read_bytes() == before  # the original is untouched
    samples = _samples(out)
    old = {s["id"]: s for s in _samples(run_dir)}
    assert len(samples) == 18
    for sample in samples:
        assert sample["predicted_emotion"] == "anger" and sample["correct"] == (sample["target_emotion"] == "anger")
        assert sample["completion"] == old[sample["id"]]["completion"]
        assert sample["fluency"] == old[sample["id"]]["fluency"]
    anger_share = sum(s["target_emotion"] == "anger" for s in samples) / 18
    assert results["metrics"]["accuracy"]["overall"]["acc"] == pytest.approx(anger_share)
    assert results["spec"]["scorer"]["id"] == "test-always-anger"
    assert results["rescore"]["from_scorer"]["id"] == "test-keywords"
    assert results["rescore"]["from_accuracy_overall"] == original["metrics"]["accuracy"]["overall"]
    assert json.loads((out / "run.json").read_text())["scorer"]["id"] == "test-always-anger"
    validate_run(out)  # the leaderboard's checks: schema, n, metrics recomputed from the samples
    with pytest.raises(UserError, match="already holds results"):
        rescore(run_dir, AlwaysAnger(), out, progress=False)
    _, default_out = rescore(run_dir, AlwaysAnger(), progress=False)
    assert default_out == run_dir.with_name(f"{run_dir.name}-test-always-anger")  # beside, not inside


def test_a_scorer_that_fails_on_a_reply_leaves_no_results(finished, tmp_path):
    _, run_dir = finished
    with pytest.raises(UserError, match="1 of 18 replies could not be scored"):
        rescore(run_dir, FailsOnSome(), tmp_path / "failed", progress=False)
    assert not (tmp_path / "failed" / "results.json").exists()


def test_rescore_cli(finished, tmp_path, capsys):
    _, run_dir = finished
    out = tmp_path / "cli"
    assert main(["rescore", str(run_dir), "--scorer", "test-keywords", "--output-dir", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "with test-keywords ->" in text and (out / "plots").is_dir()
    assert json.loads((out / "results.json").read_text())["metrics"]["accuracy"] == json.loads(
        (run_dir / "results.json").read_text()
    )["metrics"]["accuracy"]  # same scorer, same verdicts
    assert main(["rescore", str(tmp_path / "nothing"), "--scorer", "test-keywords"]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["rescore", str(run_dir), "--scorer", "test-keywords", "--output-dir", str(run_dir)]) == 2
