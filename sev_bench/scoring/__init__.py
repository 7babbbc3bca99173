"""Emotion scorers: text -> probabilities over the six emotions, calibrated against the paper's judge.

Built-in: `minilm-emotions` (the default), `minilm-probe`, `minilm-finetuned`, `hf-classifier`, `judge`.
Third-party packages add scorers through the entry-point group `sev_bench.scorers` (a `Scorer` subclass with
a classmethod `load(data_dir=..., verbose=...)`, plus `options=...` if it takes scorer options).
"""

from . import emotion_classifier, hf_classifier, judge, minilm_finetuned, minilm_probe  # noqa: F401  (registers the built-ins)
from .base import DEFAULT_SCORER, SCORERS, Scorer, load_scorer

__all__ = ["DEFAULT_SCORER", "SCORERS", "Scorer", "load_scorer"]
