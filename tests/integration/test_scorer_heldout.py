"""Held-out measurements of a scorer: GoEmotions test (Ekman grouping), the plain statements, calibration.

The last test holds the default scorer to what it reaches on the plain statements (see MIN_* below); it
trains the default scorer on first use (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keyword_scorer import KeywordScorer

from sev_bench.cli import main
from sev_bench.defaults import DEFAULT_SCORER
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring import load_scorer
from sev_bench.scoring.heldout import (
    evaluate_goemotions,
    evaluate_statements,
    expected_calibration_error,
    label_figures,
    load_statements,
)


def test_expected_calibration_error():
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error([0.9] * 10, [False] * 10) == pytest.approx(0.9)
    # two bins, each weighted by its share: 0.5 * |0.3 - 1| + 0.5 * |0.95 - 0|
    assert expected_calibration_error([0.3, 0.95], [True, False]) == pytest.approx(0.825)


def test_label_figures():
    figures = label_figures(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert figures["accuracy"] == 0.5
    assert figures["per_label"]["a"] == {"n": 2, "recall": 0.5, "precision": 1.0, "f1": pytest.approx(2 / 3, abs=1e-6)}
    assert figures["per_label"]["c"]["f1"] == 0.0
    assert figures["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.5, 0.0]), abs=1e-6)


def test_the_plain_statements_are_varied_and_complete():
    rows = load_statements()
    counts = {label: sum(r["label"] == label for r in rows) for label in (*EMOTIONS, "none")}
    assert all(counts[e] >= 20 for e in EMOTIONS) and counts["none"] >= 40
    assert len({r["id"] for r in rows}) == len(rows) and len({r["text"] for r in rows}) == len(rows)
    for emotion in EMOTIONS:
        mine = [r for r in rows if r["label"] == emotion]
        assert {r["form"] for r in mine} >= {"first-person", "about-others"}
        assert {r["length"] for r in mine} == {"short", "long"}


def test_goemotions_report_for_a_six_label_scorer():
    report = evaluate_goemotions(KeywordScorer())
    # a scorer without `none` is measured on the emotional comments only
    assert report["n"] == 4968 - 1606 and report["per_label"]["surprise"]["n"] == 488
    assert 0 <= report["macro_f1"] <= 1 and 0 <= report["ece"] <= 1
    assert report["false_none_on_emotional"] == 0.0 and report["none_on_neutral"] is None
    assert sum(map(sum, report["confusion"]["matrix"])) == report["n"]


def test_scorer_eval_reports_all_measurements(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["scorer", "eval", "--scorer", "test-keywords", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GoEmotions test (Ekman grouping" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout"]["goemotions"]["macro_f1"] == json.loads((out / "goemotions.json").read_text())["macro_f1"]
    assert (out / "confusion-goemotions.png").is_file()


# The project's bar is 90% per emotion; the default reaches 76.7-93.3% (README, "Scoring"), so this guards
# what it reaches, with a margin of two statements for a retrain on another CPU: it must not regress.
MIN_NAMED_PER_EMOTION = 0.70
MIN_NAMED_OVERALL = 0.85
MIN_NONE_ON_EMOTIONLESS = 0.95


@pytest.mark.slow
def test_the_default_scorer_names_plain_statements():
    scorer = load_scorer(DEFAULT_SCORER, verbose=False)
    report = evaluate_statements(scorer)
    named = report["named_per_label"]
    missed = {m["id"]: m["predicted"] for m in report["misses"]}
    assert all(named[e] >= MIN_NAMED_PER_EMOTION for e in EMOTIONS), (named, missed)
    assert report["accuracy"] >= MIN_NAMED_OVERALL, (named, missed)
    assert named["none"] >= MIN_NONE_ON_EMOTIONLESS, (named, missed)
    # the figures travel with the scorer into every result
    assert scorer.info()["heldout"]["statements"]["named_per_label"] == named


def test_scorer_eval_without_goemotions_still_measures_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEV_BENCH_GOEMOTIONS_DIR", str(tmp_path / "missing"))
    out = tmp_path / "eval"
    assert main(["scorer", "eval", "--scorer", "test-keywords", "--output-dir", str(out)]) == 0
    assert "GoEmotions test skipped" in capsys.readouterr().err
    assert (out / "agreement.json").is_file() and not (out / "goemotions.json").exists()
