"""How a scorer reads emotion on text it was not trained on, away from the paper's judge and its one model.

- `evaluate_goemotions`: GoEmotions' own test split under its authors' Ekman grouping (human-written
  Reddit comments). Single-label figures on the comments whose labels fall into one group: accuracy,
  macro-F1 over the seven labels, per-label recall / precision / F1, expected calibration error; plus, on
  the ambiguous comments (labels in several groups), how often the scorer names one of them. Published
  multi-label results (BERT-base, Demszky et al. 2020: macro-F1 0.64 on the Ekman grouping) are the
  orientation, not the same protocol.
- `evaluate_statements`: plain statements written for this project (`plain_statements.jsonl`, 30 per
  emotion in varied wordings, first-person and about others, short and long, plus 60 emotionless ones): the
  share named correctly per emotion, and the `none` share on the emotionless ones.

Both report the false-`none` rate (emotional text called `none`) beside the `none` rate on neutral text,
since a scorer can reach either one alone by calling everything the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import goemotions
from ..errors import UserError
from ..prompts import EMOTIONS
from .base import Scorer

NONE = "none"
ECE_BINS = 15
_STATEMENTS = "plain_statements.jsonl"


def expected_calibration_error(top_prob: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by the bin's share of items."""
    top_prob, correct = np.asarray(top_prob, dtype=float), np.asarray(correct, dtype=float)
    if not len(top_prob):
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(top_prob, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(top_prob[members].mean() - correct[members].mean())
    return round(float(error), 6)


def label_figures(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """Per label: n, recall, precision, F1; and accuracy and macro-F1 over the labels present in `gold`."""
    per_label = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        n_gold = sum(g == label for g in gold)
        n_pred = sum(p == label for p in predicted)
        recall = tp / n_gold if n_gold else None
        precision = tp / n_pred if n_pred else (0.0 if n_gold else None)
        f1 = (
            (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
            if recall is not None
            else None
        )
        per_label[label] = {
            "n": n_gold,
            "recall": None if recall is None else round(recall, 6),
            "precision": None if precision is None else round(precision, 6),
            "f1": None if f1 is None else round(f1, 6),
        }
    present = [cell["f1"] for cell in per_label.values() if cell["n"]]
    return {
        "n": len(gold),
        "accuracy": round(sum(g == p for g, p in zip(gold, predicted)) / len(gold), 6) if gold else None,
        "macro_f1": round(float(np.mean(present)), 6) if present else None,
        "per_label": per_label,
    }


def _none_rates(gold: Sequence[str], predicted: Sequence[str]) -> dict:
    emotional = [p for g, p in zip(gold, predicted) if g != NONE]
    neutral = [p for g, p in zip(gold, predicted) if g == NONE]
    return {
        "false_none_on_emotional": round(sum(p == NONE for p in emotional) / len(emotional), 6) if emotional else None,
        "none_on_neutral": round(sum(p == NONE for p in neutral) / len(neutral), 6) if neutral else None,
    }


def _predict(scorer: Scorer, texts: list[str]) -> tuple[list[str], np.ndarray]:
    probs = np.asarray(scorer.predict_proba(texts), dtype=np.float64)
    return [scorer.labels[i] for i in probs.argmax(axis=1)], probs.max(axis=1)


def _needs_none(scorer: Scorer, what: str) -> None:
    if NONE not in scorer.labels:
        raise UserError(f"{what} needs a scorer with a `none` label; {scorer.id} has only {', '.join(scorer.labels)}")


def evaluate_goemotions(scorer: Scorer, split: str = "test") -> dict:
    """The scorer on GoEmotions `split` under the Ekman grouping (see module docstring)."""
    comments = goemotions.load(split)
    clear = [c for c in comments if not c.ambiguous]
    ambiguous = [c for c in comments if c.ambiguous]
    labels = list(scorer.labels)
    predicted, top = _predict(scorer, [c.text for c in clear])  # no comment is empty: argmax of the labels
    gold = [c.groups[0] for c in clear]
    # A six-label scorer cannot say `none`: its figures are over the emotional comments only.
    kept = [i for i, g in enumerate(gold) if g in labels]
    gold_kept, pred_kept = [gold[i] for i in kept], [predicted[i] for i in kept]
    figures = label_figures(gold_kept, pred_kept, labels)
    amb_predicted, _ = _predict(scorer, [c.text for c in ambiguous]) if ambiguous else ([], None)
    confusion = [[sum(g == r and p == c for g, p in zip(gold_kept, pred_kept)) for c in labels] for r in labels]
    return {
        "dataset": "GoEmotions",
        "split": split,
        "grouping": "Ekman (the authors' ekman_mapping.json); joy = happiness, neutral = none",
        "files_sha256": goemotions.fingerprint(),
        **figures,
        "ece": expected_calibration_error([top[i] for i in kept], [g == p for g, p in zip(gold_kept, pred_kept)]),
        **_none_rates(gold_kept, pred_kept),
        "ambiguous": {
            "n": len(ambiguous),
            "names_one_of_its_groups": round(
                sum(p in c.groups for p, c in zip(amb_predicted, ambiguous)) / len(ambiguous), 6
            )
            if ambiguous
            else None,
        },
        "confusion": {"rows": labels, "columns": labels, "matrix": confusion},
    }


def statements_path() -> Path:
    """The plain statements: shipped inside the package, or (in a checkout) under `tests/data/`."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / _STATEMENTS, here.parents[2] / "tests" / "data" / _STATEMENTS):
        if candidate.is_file():
            return candidate
    raise UserError(f"{_STATEMENTS} not found (a checkout keeps it in tests/data/); reinstall sev-bench")


def load_statements(path: Path | None = None) -> list[dict]:
    path = path or statements_path()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        if row.get("label") not in (*EMOTIONS, NONE) or not isinstance(row.get("text"), str):
            raise UserError(f"{path}: bad statement {row.get('id')!r} (needs text and a label)")
    return rows


def evaluate_statements(scorer: Scorer, path: Path | None = None) -> dict:
    """The scorer on the plain statements (see module docstring)."""
    rows = load_statements(path)
    _needs_none(scorer, "the plain-statements set")
    predicted, top = _predict(scorer, [row["text"] for row in rows])
    gold = [row["label"] for row in rows]
    figures = label_figures(gold, predicted, list(scorer.labels))
    misses = [
        {"id": row["id"], "text": row["text"], "label": row["label"], "predicted": p}
        for row, p in zip(rows, predicted)
        if p != row["label"]
    ]
    return {
        "set": "plain statements (tests/data/plain_statements.jsonl)",
        **figures,
        "named_per_label": {label: cell["recall"] for label, cell in figures["per_label"].items()},
        "ece": expected_calibration_error(top, [g == p for g, p in zip(gold, predicted)]),
        **_none_rates(gold, predicted),
        "misses": misses,
    }


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_heldout(goemotions_report: dict | None, statements_report: dict | None) -> str:
    """Both reports as markdown tables."""
    lines = []
    for title, report in (
        (f"GoEmotions {goemotions_report['split']} (Ekman grouping, unambiguous comments)", goemotions_report)
        if goemotions_report
        else (None, None),
        ("Plain statements", statements_report) if statements_report else (None, None),
    ):
        if report is None:
            continue
        labels = list(report["per_label"])
        lines += [
            f"{title}: n={report['n']:,}, accuracy {_pct(report['accuracy'])}%, macro-F1 {report['macro_f1']:.3f}, "
            f"ECE {report['ece']:.3f}, false-none on emotional {_pct(report['false_none_on_emotional'])}%, "
            f"none on neutral {_pct(report['none_on_neutral'])}%",
            "",
            "| | " + " | ".join(labels) + " |",
            "| --- | " + " | ".join("---:" for _ in labels) + " |",
            "| n | " + " | ".join(str(report["per_label"][label]["n"]) for label in labels) + " |",
            "| recall % | " + " | ".join(_pct(report["per_label"][label]["recall"]) for label in labels) + " |",
            "| precision % | " + " | ".join(_pct(report["per_label"][label]["precision"]) for label in labels) + " |",
            "| F1 | "
            + " | ".join(
                "-" if report["per_label"][label]["f1"] is None else f"{report['per_label'][label]['f1']:.3f}"
                for label in labels
            )
            + " |",
            "",
        ]
        if report.get("ambiguous", {}).get("n"):
            lines += [
                f"Ambiguous comments (labels in several groups, n={report['ambiguous']['n']:,}): the scorer names one "
                f"of them on {_pct(report['ambiguous']['names_one_of_its_groups'])}%.",
                "",
            ]
    return "\n".join(lines)
