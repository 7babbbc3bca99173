"""Shared fixtures: the SEV folder of the workspace, an isolated cache, a cheap keyword scorer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sev_bench.prompts import EMOTIONS
from sev_bench.scoring import SCORERS, Scorer

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


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, sev_data_dir, tmp_path_factory):
    """Every test reads SEV from the workspace copy. The cache (converted models, trained scorers) is
    $SEV_BENCH_CACHE when CI sets it, else one temporary dir for the whole session."""
    monkeypatch.setenv("SEV_BENCH_DATA_DIR", str(sev_data_dir))
    if "SEV_BENCH_CACHE" not in os.environ:
        monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SEV_BENCH_BASE_URL", raising=False)


KEYWORDS = {
    "anger": ("angry", "anger", "furious", "unacceptable"),
    "sadness": ("sad", "sorry", "heartbroken", "unfortunately"),
    "happiness": ("happy", "great", "wonderful", "glad"),
    "fear": ("afraid", "scared", "worried", "fear"),
    "surprise": ("wow", "surprised", "unexpected", "shocking"),
    "disgust": ("disgusting", "gross", "disgust", "revolting"),
}


@SCORERS.register("test-keywords")
class KeywordScorer(Scorer):
    """A deterministic word-count scorer for fast mechanics tests (not a real emotion scorer)."""

    name = "test-keywords"
    description = "test only: counts emotion keywords"

    @classmethod
    def load(cls, data_dir=None, verbose=True):
        return cls()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(repr(sorted(KEYWORDS.items())).encode()).hexdigest()

    def predict_proba(self, texts):
        counts = np.ones((len(texts), len(EMOTIONS)))
        for row, text in enumerate(texts):
            lowered = text.lower()
            for column, emotion in enumerate(EMOTIONS):
                counts[row, column] += sum(lowered.count(word) for word in KEYWORDS[emotion])
        return counts / counts.sum(axis=1, keepdims=True)
