"""Loading a scorer that sev-bench trains itself (`minilm-emotions`, `minilm-finetuned`, `minilm-probe`):
the saved weights when they are there and fit the installed encoder, else train first and measure the
fresh weights against the paper's judge at once, so every result made with them records the figure.

Its own module (not `base.py`) because measuring needs `evaluation.py`, which itself builds on the
scorer interface in `base.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from .base import Scorer
from .evaluation import evaluate_scorer


def load_trained(
    cls: type[Scorer],
    path: Path,
    train: Callable,
    how: str,
    data_dir=None,
    verbose: bool = True,
    loader: Callable | None = None,
    present: Callable | None = None,
) -> Scorer:
    """The scorer `cls` saved at `path` (via `loader`, default `cls.from_file`, and `stale_reason()`), trained
    first with `train(data_dir, path)` when missing (`present(path)` false; default: `path` exists) or
    stale; a freshly trained scorer has its agreement with the paper's judge measured at once, so every
    result made with it records the figure. `how` says what training does, for the notice on stderr."""
    loader = loader or cls.from_file
    present = present or Path.exists
    if present(path):
        scorer = loader(path)
        stale = scorer.stale_reason()
        if stale is None:
            return scorer
        why = f"at {path} was trained with {stale}"
    else:
        why = "not trained yet"
    if verbose:
        print(f"scorer {cls.name} {why}; {how} on the train-split reference generations ...", file=sys.stderr)
    train(data_dir, path)
    scorer = loader(path)
    if verbose:
        print(
            f"scorer {cls.name}: measuring agreement with the paper's judge on the test split"
            + (" and the held-out sets (GoEmotions test, plain statements)" if "none" in cls.labels else "")
            + " ...",
            file=sys.stderr,
        )
    evaluate_scorer(scorer, data_dir=data_dir, store=True)
    return scorer
