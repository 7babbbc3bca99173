"""Every user mistake exits 2 with one line on stderr and no traceback; the happy paths print tables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from locations import FAST_PROMPTING

from sev_bench.cli import main

FAST = str(FAST_PROMPTING)
TINY = ["--model", "tiny-random-qwen2", "--scorer", "test-keywords", "--no-progress"]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sev-bench: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--method", "telepathy"], "unknown method 'telepathy'"),
        (["run", "--scorer", "oracle"], "unknown scorer 'oracle'"),
        (["run", "--threads", "0"], "--threads must be >= 1"),
        (["run", "--shard", "2/2"], "expected I/N with 0 <= I < N"),
        (["run", "--emotions", "joy"], "unknown emotion 'joy'"),
        (["run", "--valences", "mixed"], "unknown valence 'mixed'"),
        (["run", "--split", "validation"], "unknown split 'validation'"),
        (["run", "--limit", "0"], "--limit must be >= 1"),
        (["run", "--limit", "ten"], "invalid int value"),
        (["run", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["run", "--set", "alpha"], "expected key=value"),
        (["run", "--set", "alpha=8"], "has no parameter 'alpha'"),
        (["run", "--method", "missing.yaml"], "no such config file"),
        (["run", "--data-dir", "/nonexistent/sev"], "does not exist"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
        (["data", "info", "--data-dir", "/nonexistent/sev"], "does not exist"),
        (["scorer", "eval", "--scorer", "oracle"], "unknown scorer"),
        (["score", "/nonexistent.jsonl", "-o", "out.jsonl"], "no such file"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, argv, message):
    assert message in _error_line(capsys, argv)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "./no/such/dir"], "no such file or directory"),
        (["--model", "tiny-random-qwen2", "--dtype", "float8"], "--dtype"),
        (["--model", "tiny-random-qwen2", "--device", "cuda:7"], "--device"),
    ],
)
def test_model_mistakes_exit_2_with_one_line(capsys, tmp_path, flags, message):
    argv = [
        "run",
        "--method",
        FAST,
        "--limit",
        "1",
        "--scorer",
        "test-keywords",
        "--output-dir",
        str(tmp_path / "r"),
    ]
    assert message in _error_line(capsys, argv + flags)
    assert not (tmp_path / "r" / "results.json").exists()


def test_run_prints_the_summary_table(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", FAST, "--limit", "6", "--output-dir", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| valence | anger | sadness | happiness | fear | surprise | disgust | all |" in printed
    assert json.loads((out / "results.json").read_text())["metrics"]["accuracy"]["overall"]["n"] == 6


def test_methods_and_scorers_are_listed(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "prompting" in listed and "none" in listed and "Always reply in" in listed
    assert main(["scorers"]) == 0
    assert "minilm-probe" in capsys.readouterr().out


def test_console_script_runs_as_a_program():
    """The installed `sev-bench` entry point (not just `main`), with argparse errors as one line."""
    result = subprocess.run(
        [sys.executable, "-m", "sev_bench", "run", "--emotions", "joy"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sev-bench: error: unknown emotion 'joy'; expected one of anger, sadness, happiness, fear, surprise, disgust"
    )
