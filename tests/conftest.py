"""Shared fixtures: the SEV and GoEmotions folders of the workspace, an isolated cache, a cheap keyword scorer.

Layout: tests/unit (fast, tiny random models and the keyword scorer only), tests/integration (real models,
trained scorers, vLLM, a browser; every test there is marked `slow`), tests/support (shared helpers, on the
import path via pyproject's `pythonpath`), tests/data (committed test sets).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from keyword_scorer import KeywordScorer  # noqa: F401  (importing it registers the "test-keywords" scorer)
from locations import goemotions_dir, sev_dir

from sev_bench import data
from sev_bench.errors import UserError

# The tiny models are far too small to gain from intra-op threads, and OpenMP threads that spin on a
# busy 2-core machine made a 16-token generate 100x slower here (6 s instead of 0.05 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sev_data_dir() -> Path:
    """The workspace copy (`../shared/sev`) or $SEV_BENCH_DATA_DIR; elsewhere, the pinned release
    downloaded into the user's cache (sha256-checked), as `sev-bench run` would."""
    path = sev_dir()
    if (path / "sev.jsonl").is_file():
        return path
    try:
        for pinned in [*data.SEV_FILES.values(), *data.REFERENCE_FILES.values()]:
            data.fetch(pinned)
    except UserError as exc:
        pytest.fail(f"SEV files not found in {path} and not downloadable ({exc}); set SEV_BENCH_DATA_DIR")
    return data.data_root()[0]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, sev_data_dir, tmp_path_factory):
    """Every test reads SEV from the workspace copy. The cache (converted models, trained scorers) is
    $SEV_BENCH_CACHE when CI sets it, else one temporary dir for the whole session."""
    monkeypatch.setenv("SEV_BENCH_DATA_DIR", str(sev_data_dir))
    if (goemotions_dir() / "train.tsv").is_file():  # else GoEmotions downloads into the cache, as for a user
        monkeypatch.setenv("SEV_BENCH_GOEMOTIONS_DIR", str(goemotions_dir()))
    if "SEV_BENCH_CACHE" not in os.environ:
        monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SEV_BENCH_BASE_URL", raising=False)


def pytest_collection_modifyitems(config, items):
    """Every integration test is `slow`, so `-m "not slow"` is the unit suite."""
    integration = Path(__file__).resolve().parent / "integration"
    for item in items:
        if integration in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)
