"""How far a scorer agrees with the paper's GPT-4o-mini judge, on the test split's judged replies.

For each of the 2,880 test-split reference replies (accepted and rejected): `judge_match` is the
judge's verdict and `scorer_correct` is whether the scorer's argmax equals the target emotion. The
report gives, overall, by target emotion and by valence: both accuracies, their raw agreement, Cohen's
kappa of the two binary verdicts and the scorer's accuracy on the judge-accepted replies; plus, on
the judge-accepted replies, per-emotion recall / precision and the confusion matrix (target x predicted).
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import data
from ..hashing import file_sha256
from ..metrics import cohen_kappa
from ..prompts import EMOTIONS, VALENCES
from .base import Scorer
from .heldout import expected_calibration_error

SPLIT = "test"
SUMMARY_KEYS = (
    "n",
    "judge_accuracy",
    "scorer_accuracy",
    "agreement",
    "cohen_kappa",
    "accuracy_on_judge_accepted",
)


def _rate(values) -> float | None:
    values = list(values)
    return round(sum(bool(v) for v in values) / len(values), 6) if values else None


def _kappa(a: list[bool], b: list[bool]) -> float | None:
    if not a:
        return None
    value = cohen_kappa(a, b)
    return None if math.isnan(value) else round(value, 6)


def _cell(judge: list[bool], scorer: list[bool]) -> dict:
    accepted = [s for j, s in zip(judge, scorer, strict=True) if j]
    return {
        "n": len(judge),
        "n_judge_accepted": len(accepted),
        "judge_accuracy": _rate(judge),
        "scorer_accuracy": _rate(scorer),
        "agreement": _rate(j == s for j, s in zip(judge, scorer, strict=True)),
        "cohen_kappa": _kappa(judge, scorer),
        "accuracy_on_judge_accepted": _rate(accepted),
    }


def evaluate_agreement(scorer: Scorer, data_dir: str | Path | None = None, store: bool = True) -> dict:
    """Agreement of `scorer` with the judge on the test split (see module docstring). With `store`,
    the overall figures are kept next to the scorer's weights so `scorer.info()` reports them."""
    all_rows = data.load_reference(SPLIT, data_dir)
    # `score` rather than argmax(predict_proba): scorers that need the target (the LLM judge) work too.
    # Texts the scorer failed on (`correct` None) are left out and counted in `n_failed`.
    scores = scorer.score([row["gen_text"] for row in all_rows], [row["emotion"] for row in all_rows])
    kept = [i for i, s in enumerate(scores) if s["correct"] is not None]
    n_failed = len(all_rows) - len(kept)
    rows = [all_rows[i] for i in kept]
    predicted = [scores[i]["predicted_emotion"] for i in kept]
    targets = [row["emotion"] for row in rows]
    valences = [row.get("valence") for row in rows]
    judge = [row["judge"]["match"] == 1 for row in rows]
    correct = [bool(scores[i]["correct"]) for i in kept]

    def cell(keep) -> dict:
        idx = [i for i in range(len(rows)) if keep(i)]
        return _cell([judge[i] for i in idx], [correct[i] for i in idx])

    accepted = [i for i in range(len(rows)) if judge[i]]
    # Calibration and false-`none` on the judge-accepted replies (emotional by the judge's verdict).
    top = [max(scores[kept[i]]["probs"].values()) if scores[kept[i]].get("probs") else None for i in accepted]
    ece = (
        expected_calibration_error(top, [correct[i] for i in accepted])
        if accepted and all(t is not None for t in top)
        else None
    )
    false_none = _rate(predicted[i] == "none" for i in accepted) if "none" in scorer.labels else None
    # Columns: the scorer's labels, plus `none` for a six-label scorer that was given an empty reply.
    columns = list(scorer.labels) + [p for p in ("none",) if p not in scorer.labels and p in predicted]
    matrix = [[0] * len(columns) for _ in EMOTIONS]
    for i in accepted:
        matrix[EMOTIONS.index(targets[i])][columns.index(predicted[i])] += 1
    recall, precision = {}, {}
    for r, emotion in enumerate(EMOTIONS):
        row_total = sum(matrix[r])
        hit = matrix[r][columns.index(emotion)] if emotion in columns else 0
        column_total = sum(m[columns.index(emotion)] for m in matrix) if emotion in columns else 0
        recall[emotion] = round(hit / row_total, 6) if row_total else None
        precision[emotion] = round(hit / column_total, 6) if column_total else None

    root, _ = data.data_root(data_dir)
    files = {
        pinned.local: file_sha256(root / pinned.local)
        for (split, _outcome), pinned in data.REFERENCE_FILES.items()
        if split == SPLIT
    }
    report = {
        "scorer": {"id": scorer.id, "sha256": scorer.sha256, "labels": list(scorer.labels)},
        "split": SPLIT,
        "reference": data.REFERENCE_DIR,
        "files_sha256": files,
        "n_failed": n_failed,
        "overall": cell(lambda i: True),
        "by_emotion": {e: cell(lambda i, e=e: targets[i] == e) for e in EMOTIONS},
        "by_valence": {v: cell(lambda i, v=v: valences[i] == v) for v in VALENCES if any(x == v for x in valences)},
        "judge_accepted": {
            "n": len(accepted),
            "ece": ece,
            "false_none": false_none,
            "recall": recall,
            "precision": precision,
            "confusion": {
                "rows": list(EMOTIONS),
                "columns": columns,
                "note": "judge-accepted replies; rows = target emotion, columns = scorer's predicted label",
                "matrix": matrix,
            },
        },
    }
    if store:
        figures = {key: report["overall"][key] for key in SUMMARY_KEYS}
        figures.update(ece_on_judge_accepted=ece, false_none_on_judge_accepted=false_none)
        figures.update(split=SPLIT, reference=data.REFERENCE_DIR, files_sha256=files)
        scorer.store_agreement(figures)
    return report


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_agreement(report: dict) -> str:
    """The report as markdown tables (readable as plain text)."""
    scorer = report["scorer"]
    overall = report["overall"]
    lines = [
        f"Scorer {scorer['id']} (sha256 {scorer['sha256'][:12]}) vs the paper's judge: "
        f"{report['split']} split, "
        f"{overall['n']:,} judged replies ({overall['n_judge_accepted']:,} accepted by the judge)"
        + (f"; {report['n_failed']:,} replies the scorer failed on left out" if report.get("n_failed") else ""),
        "",
        "| group | n | judge acc | scorer acc | agreement | kappa | scorer acc on judge-accepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(name: str, cell: dict) -> str:
        values = [cell[key] for key in SUMMARY_KEYS]
        return f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |"

    lines.append(row("**overall**", overall))
    lines += [row(emotion, cell) for emotion, cell in report["by_emotion"].items()]
    lines += [row(f"valence {valence}", cell) for valence, cell in report["by_valence"].items()]

    accepted = report["judge_accepted"]
    confusion = accepted["confusion"]
    extra = ""
    if accepted.get("ece") is not None:
        extra += f"; expected calibration error {accepted['ece']:.3f}"
    if accepted.get("false_none") is not None:
        extra += f"; called `none` on {100 * accepted['false_none']:.1f}%"
    lines += [
        "",
        f"Judge-accepted replies (n={accepted['n']:,}{extra}): rows = target emotion, columns = predicted",
        "",
        "| target | " + " | ".join(confusion["columns"]) + " | recall | precision |",
        "| --- | " + " | ".join("---:" for _ in confusion["columns"]) + " | ---: | ---: |",
    ]
    for name, counts in zip(confusion["rows"], confusion["matrix"], strict=True):
        lines.append(
            f"| {name} | "
            + " | ".join(str(c) for c in counts)
            + f" | {_fmt(accepted['recall'].get(name))} | {_fmt(accepted['precision'].get(name))} |"
        )
    return "\n".join(lines) + "\n"
