"""SEV emotion-expression accuracy as a Hugging Face `evaluate` metric.

Load it from this folder, offline: `evaluate.load("metrics/sev_accuracy")`. Self-contained on purpose (it
does not import sev-bench), so replies scored in another harness get the same figures as a sev-bench run's
`results.json`: accuracy overall, per valence, per target emotion and per (valence, emotion), each with
`n`, `correct`, `acc` and a Wilson 95% interval; with `fluent`, the same for fluent accuracy.
"""

from __future__ import annotations

import math

import datasets
import evaluate

EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
VALENCES = ("positive", "neutral", "negative")
NO_EMOTION = "none"
PREDICTION_LABELS = (*EMOTIONS, NO_EMOTION)
Z95 = 1.959963984540054  # the two-sided 95% normal quantile

_CITATION = """\
@misc{wang2025llmsfeel,
  title = {Do {LLMs} ``Feel''? Emotion Circuits Discovery and Control},
  author = {Wang and others},
  year = {2025},
  eprint = {2510.11328},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2510.11328}
}
"""

_DESCRIPTION = """\
Emotion-expression accuracy on SEV (Scenario-Event with Valence): a control method must make a chat model
reply in a target emotion; an emotion scorer labels each reply with one of the six emotions or `none`; a
reply is a hit when its label is the target emotion. Reports accuracy overall, per valence context, per
target emotion and per (valence, emotion) cell, each with a Wilson 95% interval, and, given a fluency flag
per reply, fluent accuracy (a hit counts only if the reply is fluent). The figures equal sev-bench's
`metrics.accuracy` and `metrics.accuracy_fluent`.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `str`): the scorer's label of each reply: one of anger, sadness, happiness,
        fear, surprise, disgust, none.
    references (`list` of `str`): the target emotion of each row (one of the six emotions).
    valences (`list` of `str`): the valence of each row's event: positive, neutral or negative.
    fluent (`list` of `bool`, optional): whether each reply passed the fluency gate. Pass it to `compute`
        (not `add_batch`), one flag per row added.

Returns:
    accuracy (`dict`): `overall` (a cell), `by_valence` (valence -> cell), `by_emotion` (emotion -> cell)
        and `by_valence_emotion` (valence -> emotion -> cell). A cell is `{"n", "correct", "acc", "ci95"}`,
        `ci95` the Wilson 95% interval `[low, high]`. Only valences and emotions present are listed.
    predicted_share (`dict`): the share of replies given each label (the six emotions and none).
    accuracy_fluent (`dict`, only with `fluent`): as `accuracy`, a hit counting only if the reply is fluent.
    fluent_share (`float`, only with `fluent`): the share of fluent replies.

Examples:
    >>> sev_accuracy = evaluate.load("metrics/sev_accuracy")
    >>> result = sev_accuracy.compute(
    ...     predictions=["anger", "none", "fear", "fear"],
    ...     references=["anger", "sadness", "fear", "disgust"],
    ...     valences=["positive", "positive", "negative", "negative"],
    ...     fluent=[True, True, False, True],
    ... )
    >>> result["accuracy"]["overall"]["acc"], result["accuracy_fluent"]["overall"]["acc"]
    (0.5, 0.25)
"""


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0.0, 0.0) when n is 0."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_cell(hits: list[bool]) -> dict:
    n, correct = len(hits), sum(1 for hit in hits if hit)
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "acc": correct / n if n else None, "ci95": [low, high]}


def grouped_accuracy(hits: list[bool], references: list[str], valences: list[str]) -> dict:
    """Cells overall, by valence, by emotion and by (valence, emotion), in the canonical label order."""
    rows = list(zip(hits, references, valences))

    def cell(keep) -> dict:
        return accuracy_cell([hit for hit, emotion, valence in rows if keep(emotion, valence)])

    present_valences = [v for v in VALENCES if v in set(valences)]
    present_emotions = [e for e in EMOTIONS if e in set(references)]
    return {
        "overall": cell(lambda e, v: True),
        "by_valence": {v: cell(lambda e, v_, v=v: v_ == v) for v in present_valences},
        "by_emotion": {e: cell(lambda e_, v, e=e: e_ == e) for e in present_emotions},
        "by_valence_emotion": {
            v: {e: cell(lambda e_, v_, v=v, e=e: v_ == v and e_ == e) for e in present_emotions}
            for v in present_valences
        },
    }


def _check_labels(name: str, values: list, allowed: tuple[str, ...]) -> None:
    for index, value in enumerate(values):
        if value not in allowed:
            raise ValueError(f"unknown label in {name}: {value!r} at index {index}; allowed: {', '.join(allowed)}")


def _check_flags(values: list, n: int) -> list[bool]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"fluent must be a list of booleans, got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"length mismatch: {n} predictions but {len(values)} fluent flags")
    flags = []
    for index, value in enumerate(values):
        if isinstance(value, (str, bytes)) or value is None or value not in (True, False):
            raise ValueError(f"fluent must hold booleans: {value!r} at index {index}")
        flags.append(bool(value))
    return flags


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SevAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "valences": datasets.Value("string"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2510.11328", "https://github.com/Aurora-cx/EmotionCircuits-LLM"],
        )

    def _compute(self, predictions, references, valences, fluent=None) -> dict:
        predictions, references, valences = list(predictions), list(references), list(valences)
        if not predictions:
            raise ValueError("no rows to score: predictions, references and valences are empty")
        _check_labels("predictions", predictions, PREDICTION_LABELS)
        _check_labels("references", references, EMOTIONS)
        _check_labels("valences", valences, VALENCES)
        hits = [prediction == reference for prediction, reference in zip(predictions, references)]
        result = {
            "accuracy": grouped_accuracy(hits, references, valences),
            "predicted_share": {
                label: sum(p == label for p in predictions) / len(predictions) for label in PREDICTION_LABELS
            },
        }
        if fluent is not None:
            flags = _check_flags(fluent, len(predictions))
            result["accuracy_fluent"] = grouped_accuracy(
                [hit and flag for hit, flag in zip(hits, flags)], references, valences
            )
            result["fluent_share"] = sum(flags) / len(flags)
        return result
