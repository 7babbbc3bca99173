"""The `test-keywords` scorer: a deterministic keyword counter for fast mechanics tests (not a real
emotion scorer). Its own module so that subprocesses of the tests (torchrun ranks) can register it too."""

from __future__ import annotations

import hashlib

import numpy as np

from sev_bench.prompts import EMOTIONS
from sev_bench.scoring import SCORERS, Scorer

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
