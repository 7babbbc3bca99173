"""`sev-bench check`: the CI accuracy-regression gate passes on a run itself, fails (exit 1) on a degraded
copy, and exits 2 on unusable input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from locations import REPO
from synthetic_runs import degraded_copy, make_samples, write_run

from sev_bench.check import check
from sev_bench.cli import main
from sev_bench.prompts import VALENCES

CI_BASELINE = REPO / "leaderboards" / "ci" / "prompting-smollm2"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run", make_samples(lambda i, v, e: i % 2 == 0))  # 3 of 6 right per valence


def test_a_run_passes_against_itself(run_dir, capsys):
    assert main(["check", str(run_dir), "--baseline", str(run_dir / "results.json"), "--tolerance", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sev-bench check: PASS")
    assert "| overall | 36 | 50.0 | 50.0 | +0.0 | ok |" in out


def test_a_degraded_run_fails_with_a_table_of_what_dropped(run_dir, tmp_path, capsys):
    worse = degraded_copy(run_dir, tmp_path / "worse", "negative", 3)  # negative 50.0% -> 25.0%
    assert main(["check", str(worse), "--baseline", str(run_dir), "--tolerance", "0.05"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("sev-bench check: FAIL: accuracy dropped beyond the tolerance (tolerance 5.0 points")
    assert "| negative | 12 | 50.0 | 25.0 | -25.0 | **DROPPED** |" in out
    assert "| overall | 36 | 50.0 | 41.7 | -8.3 | **DROPPED** |" in out
    assert "| positive | 12 | 50.0 | 50.0 | +0.0 | ok |" in out
    # within a wide enough tolerance it passes; the drop of exactly T passes too
    assert main(["check", str(worse), "--baseline", str(run_dir), "--tolerance", "0.25"]) == 0
    report = check(worse, run_dir, 0.25)
    assert [row.group for row in report.rows] == ["overall", *VALENCES] and report.passed


def test_an_improvement_passes_at_zero_tolerance(run_dir, tmp_path):
    worse = degraded_copy(run_dir, tmp_path / "worse", "positive", 1)
    assert main(["check", str(run_dir), "--baseline", str(worse), "--tolerance", "0"]) == 0


def test_changed_setup_is_noted_not_refused(run_dir, tmp_path, capsys):
    other = write_run(tmp_path / "other", make_samples(lambda i, v, e: i % 2 == 0), scorer_sha256="b" * 64)
    assert main(["check", str(other), "--baseline", str(run_dir), "--tolerance", "0"]) == 0
    assert "- note: scorer sha256 differs from the baseline's" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tolerance", "1.5"], "--tolerance 1.5 is outside [0, 1]"),
        (["--tolerance", "-0.01"], "--tolerance -0.01 is outside [0, 1]"),
        (["--tolerance", "five"], "invalid float value"),
    ],
)
def test_bad_tolerance_exits_2(run_dir, capsys, args, message):
    assert main(["check", str(run_dir), "--baseline", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_unusable_input_exits_2(run_dir, tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing"), "--baseline", str(run_dir), "--tolerance", "0.1"]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--tolerance", "0.1"]) == 2
    assert "--baseline" in capsys.readouterr().err
    subset = write_run(tmp_path / "subset", make_samples(), limit=36)
    assert main(["check", str(subset), "--baseline", str(run_dir), "--tolerance", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "is not the baseline's" in err and "rerun with the baseline's flags" in err
    results = json.loads((run_dir / "results.json").read_text())
    results["spec"]["dataset"]["split"] = "dev"
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "results.json").write_text(json.dumps(results))
    assert main(["check", str(tmp_path / "dev"), "--baseline", str(run_dir), "--tolerance", "0.1"]) == 2
    assert "the run is on split 'dev', the baseline on 'test'" in capsys.readouterr().err
    (tmp_path / "dev" / "results.json").write_text("{")
    assert main(["check", str(tmp_path / "dev"), "--baseline", str(run_dir), "--tolerance", "0.1"]) == 2
    assert "not a readable results file" in capsys.readouterr().err


def test_the_committed_ci_baseline_catches_a_degraded_run(tmp_path, capsys):
    """What .ci/run does, on a deliberately degraded copy of the committed CI baseline."""
    assert (CI_BASELINE / "results.json").is_file()
    samples = [json.loads(line) for line in (CI_BASELINE / "samples.jsonl").read_text().splitlines()]
    assert samples and not any("messages" in s for s in samples)  # SEV text is not redistributed
    ci_script = (REPO / ".ci" / "run").read_text()
    assert "--baseline leaderboards/ci/prompting-smollm2 --tolerance 0.04" in ci_script
    assert main(["check", str(CI_BASELINE), "--baseline", str(CI_BASELINE), "--tolerance", "0.04"]) == 0
    capsys.readouterr()
    worse = degraded_copy(CI_BASELINE, tmp_path / "worse", "negative", 1)  # 1 of 24 negative replies
    assert main(["check", str(worse), "--baseline", str(CI_BASELINE), "--tolerance", "0.04"]) == 1
    out = capsys.readouterr().out
    assert "| negative | 24 | 20.8 | 16.7 | -4.2 | **DROPPED** |" in out
    assert "| overall | 72 | 20.8 | 19.4 | -1.4 | ok |" in out
