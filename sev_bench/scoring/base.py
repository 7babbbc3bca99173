"""The scorer interface: text -> probabilities over the six emotions (plus "none" where a scorer has it).

A scorer's identity is the sha256 of its saved weights file; agreement figures measured against the
paper's judge (see `agreement.py`) are kept in a sidecar JSON next to that file, keyed by the sha256,
so `info()` can report them for exactly the weights that were measured.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..atomic import write_text_atomic
from ..defaults import DEFAULT_SCORER  # noqa: F401  (re-exported by sev_bench.scoring)
from ..errors import UserError
from ..hashing import file_sha256
from ..prompts import EMOTIONS
from ..registry import Registry
from .options import check_options

NO_EMOTION = "none"  # what an empty reply expresses, for every scorer


def is_empty_reply(text) -> bool:
    return isinstance(text, str) and not text.strip()


class Scorer(ABC):
    """Base class of emotion scorers. Subclasses set `name`, `description` and `labels`, implement
    `predict_proba` and the classmethod `load`, and either set `weights_path` (the saved weights file,
    whose sha256 is the scorer's identity) or override `sha256`. A scorer that does not score by argmax
    (the judge) overrides `score_texts`; `score` itself keeps the rules every scorer shares."""

    name: ClassVar[str]
    description: ClassVar[str]
    labels: tuple[str, ...] = EMOTIONS

    weights_path: Path | None = None
    _sha256: str | None = None

    @classmethod
    @abstractmethod
    def load(cls, data_dir: str | Path | None = None, verbose: bool = True) -> Scorer:
        """A ready scorer (training or fetching whatever it needs first)."""

    @staticmethod
    def checked_texts(texts) -> list[str]:
        """`texts` as a list, refusing anything that is not a string (for `predict_proba` implementations)."""
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        return texts

    @abstractmethod
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities of shape [len(texts), len(self.labels)], each row summing to 1."""

    def score(self, texts: Sequence[str], targets: Sequence[str]) -> list[dict]:
        """Per text: `predicted_emotion` (the argmax label), `probs` (label -> probability, 6 digits)
        and `correct` (the argmax equals the target). An empty or whitespace-only text expresses no
        emotion whatever the scorer would say of it: `predicted_emotion` "none" (probability 1.0),
        never correct, and it never reaches `score_texts`."""
        texts, targets = list(texts), list(targets)
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        for target in targets:
            if target not in self.labels:
                raise UserError(f"target emotion {target!r} is not one of {', '.join(self.labels)}")
        filled = [i for i, text in enumerate(texts) if not is_empty_reply(text)]
        scores = self.score_texts([texts[i] for i in filled], [targets[i] for i in filled]) if filled else []
        results = [self.empty_reply_score() for _ in texts]
        for i, score in zip(filled, scores, strict=True):
            results[i] = score
        return results

    def empty_reply_score(self) -> dict:
        return {
            "predicted_emotion": NO_EMOTION,
            "probs": {**dict.fromkeys(self.labels, 0.0), NO_EMOTION: 1.0},
            "correct": False,
        }

    def score_texts(self, texts: list[str], targets: list[str]) -> list[dict]:
        """`score` for non-empty texts (override it, not `score`, to score otherwise than by argmax)."""
        probs = np.asarray(self.predict_proba(texts), dtype=np.float64)
        if probs.shape != (len(texts), len(self.labels)):
            raise RuntimeError(
                f"scorer {self.id} returned probabilities of shape {probs.shape}, "
                f"expected {(len(texts), len(self.labels))}"
            )
        results = []
        for row, target in zip(probs, targets, strict=True):
            predicted = self.labels[int(np.argmax(row))]
            results.append(
                {
                    "predicted_emotion": predicted,
                    "probs": {label: round(float(p), 6) for label, p in zip(self.labels, row, strict=True)},
                    "correct": predicted == target,
                }
            )
        return results

    @property
    def id(self) -> str:
        return self.name

    @property
    def sha256(self) -> str:
        """Hex sha256 of the saved weights file: the identity of the trained scorer."""
        if self._sha256 is None:
            if self.weights_path is None:
                raise NotImplementedError(f"scorer {self.id} has no weights file; override sha256")
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    @property
    def agreement_path(self) -> Path | None:
        """The sidecar JSON with agreement figures (`<weights stem>.agreement.json`), if file-backed."""
        if self.weights_path is None:
            return None
        return self.weights_path.with_name(self.weights_path.stem + ".agreement.json")

    def stored_agreement(self) -> dict | None:
        """The agreement figures stored for exactly these weights (same sha256), else None."""
        path = self.agreement_path
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # derived data: a damaged sidecar only means "not measured"
        entry = stored.get(self.sha256) if isinstance(stored, dict) else None
        return entry if isinstance(entry, dict) else None

    def store_agreement(self, figures: dict) -> Path | None:
        """Keep `figures` in the sidecar, keyed by this scorer's sha256 (atomic write). Entries of
        other weights are dropped: the sidecar describes the weights file next to it."""
        path = self.agreement_path
        if path is None:
            return None
        write_text_atomic(path, json.dumps({self.sha256: figures}, indent=2, sort_keys=True) + "\n")
        return path

    def check_failures(self) -> None:
        """Raise a one-line `UserError` when too many texts could not be scored (call it after
        scoring a run or file). Scorers that cannot fail on a text (all local ones) do nothing."""
        return None

    def info(self) -> dict:
        """Identity and the figures measured for these weights: `agreement` with the paper's judge and,
        where measured, `heldout` (GoEmotions test, plain statements; see `evaluation.py`)."""
        stored = dict(self.stored_agreement() or {})
        heldout = stored.pop("heldout", None)
        info = {
            "id": self.id,
            "description": self.description,
            "sha256": self.sha256,
            "labels": list(self.labels),
            "agreement": stored or None,
        }
        if heldout:
            info["heldout"] = heldout
        return info


SCORERS: Registry[Scorer] = Registry("scorer", "sev_bench.scorers", Scorer)


def load_scorer(
    name: str, data_dir: str | Path | None = None, verbose: bool = True, options: dict | None = None
) -> Scorer:
    """The registered scorer `name`, ready to use; an unknown name is a `UserError` listing known ones.
    `options` (see `options.OPTION_FLAGS`; None values are dropped) go to the scorer's `load(..., options=...)`;
    giving options to a scorer whose `load` takes none is a `UserError`."""
    cls = SCORERS.get(name)
    given = {key: value for key, value in (options or {}).items() if value is not None}
    try:
        takes_options = "options" in inspect.signature(cls.load).parameters
    except (TypeError, ValueError):
        takes_options = False
    if takes_options:
        return cls.load(data_dir=data_dir, verbose=verbose, options=given)
    check_options(name, given, ())
    return cls.load(data_dir=data_dir, verbose=verbose)
