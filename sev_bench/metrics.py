"""Grouped accuracy with Wilson 95% intervals, and agreement statistics (Cohen's kappa)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .prompts import EMOTIONS, VALENCES


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_cell(flags: Sequence[bool]) -> dict:
    n, correct = len(flags), int(sum(bool(f) for f in flags))
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "acc": correct / n if n else None, "ci95": [low, high]}


def grouped_accuracy(samples: Iterable[dict]) -> dict:
    """`overall`, `by_valence`, `by_emotion` and `by_valence_emotion` (valence -> emotion) cells from
    sample records with `valence`, `target_emotion` and `correct`. Only groups present are listed."""
    samples = list(samples)

    def cell(predicate) -> dict:
        return accuracy_cell([s["correct"] for s in samples if predicate(s)])

    valences = [v for v in VALENCES if any(s["valence"] == v for s in samples)]
    emotions = [e for e in EMOTIONS if any(s["target_emotion"] == e for s in samples)]
    return {
        "overall": cell(lambda s: True),
        "by_valence": {v: cell(lambda s, v=v: s["valence"] == v) for v in valences},
        "by_emotion": {e: cell(lambda s, e=e: s["target_emotion"] == e) for e in emotions},
        "by_valence_emotion": {
            v: {e: cell(lambda s, v=v, e=e: s["valence"] == v and s["target_emotion"] == e) for e in emotions}
            for v in valences
        },
    }


def predicted_share(samples: Sequence[dict]) -> dict[str, float]:
    """Share of samples the scorer assigned to each label (every label any sample's `probs` lists, in the
    order first seen: an empty reply adds `none` to a scorer's own labels)."""
    labels: dict[str, None] = {}
    for sample in samples:
        labels.update(dict.fromkeys(sample["probs"]))
    labels = labels or dict.fromkeys(EMOTIONS)
    return {label: sum(s["predicted_emotion"] == label for s in samples) / len(samples) for label in labels}


def empty_replies(samples: Iterable[dict]) -> int:
    """How many samples have an empty or whitespace-only completion (scored `none`, never correct)."""
    return sum(not sample["completion"].strip() for sample in samples)


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two raters' labels over the same items (nan when chance agreement is 1)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(label) / n) * (list(b).count(label) / n) for label in labels)
    if expected == 1:
        return float("nan")
    return (observed - expected) / (1 - expected)


def fluent_accuracy(samples: Iterable[dict]) -> dict:
    """`grouped_accuracy` where a sample counts as correct only if it is `correct` AND its fluency record
    passes the gate (`sample["fluency"]["fluent"]`, see `sev_bench.fluency`). Every sample needs a
    fluency record: a missing one raises instead of silently counting as a miss."""
    mapped = []
    for sample in samples:
        fluency = sample.get("fluency")
        if not isinstance(fluency, dict) or "fluent" not in fluency:
            raise ValueError(f"sample {sample.get('id', '?')!r} has no fluency record (fluency.fluent)")
        mapped.append({**sample, "correct": bool(sample["correct"]) and bool(fluency["fluent"])})
    return grouped_accuracy(mapped)
