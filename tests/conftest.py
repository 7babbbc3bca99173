"""Shared fixtures: the SEV and GoEmotions folders of the workspace, an isolated cache, a cheap keyword scorer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from keyword_scorer import KeywordScorer  # noqa: F401  (importing it registers the "test-keywords" scorer)

REPO = Path(__file__).resolve().parents[1]

# The tiny models are far too small to gain from intra-op threads, and OpenMP threads that spin on a
# busy 2-core machine made a 16-token generate 100x slower here (6 s instead of 0.05 s).
torch.set_num_threads(1)


def sev_dir() -> Path:
    chosen = os.environ.get("SEV_BENCH_DATA_DIR")
    return Path(chosen) if chosen else REPO.parent / "shared" / "sev"


@pytest.fixture(scope="session")
def sev_data_dir() -> Path:
    """The workspace copy (`../shared/sev`) or $SEV_BENCH_DATA_DIR; elsewhere, the pinned release
    downloaded into the user's cache (sha256-checked), as `sev-bench run` would."""
    path = sev_dir()
    if (path / "sev.jsonl").is_file():
        return path
    from sev_bench import data
    from sev_bench.errors import UserError

    try:
        for pinned in [*data.SEV_FILES.values(), *data.REFERENCE_FILES.values()]:
            data.fetch(pinned)
    except UserError as exc:
        pytest.fail(f"SEV files not found in {path} and not downloadable ({exc}); set SEV_BENCH_DATA_DIR")
    return data.data_root()[0]


def goemotions_dir() -> Path:
    chosen = os.environ.get("SEV_BENCH_GOEMOTIONS_DIR")
    return Path(chosen) if chosen else REPO.parent / "shared" / "goemotions"


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
