"""Everything `sev-bench scorer eval` measures about a scorer, in one place:

(a) agreement with the paper's judge on the test split's reference replies (`agreement.py`);
(b) GoEmotions' test split under the Ekman grouping and (c) the plain statements (`heldout.py`);
(d) stress sets from the dev split and dev-split runs (`stress.py`), when asked for.

The summary of (a)-(c) is kept beside the scorer's weights, keyed by their sha256, so every `results.json`
made with the scorer carries the figures of exactly those weights (`spec.scorer.agreement` and
`spec.scorer.heldout`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .agreement import SUMMARY_KEYS, evaluate_agreement, format_agreement
from .base import Scorer
from .heldout import evaluate_goemotions, evaluate_statements, format_heldout
from .stress import build_stress_sets, evaluate_stress, format_stress

HELDOUT_SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "ece", "false_none_on_emotional", "none_on_neutral")


def _local(scorer: Scorer) -> bool:
    """Whether the scorer gives probabilities for text alone (the held-out sets have no target emotion to ask
    a judge about)."""
    try:
        scorer.predict_proba([])
    except UserError:
        return False
    return True


def summary(report: dict) -> dict:
    """The figures kept beside the weights and copied into every result."""
    agreement = report["agreement"]
    figures = {key: agreement["overall"][key] for key in SUMMARY_KEYS}
    accepted = agreement["judge_accepted"]
    figures.update(
        split=agreement["split"],
        reference=agreement["reference"],
        files_sha256=agreement["files_sha256"],
        ece_on_judge_accepted=accepted.get("ece"),
        false_none_on_judge_accepted=accepted.get("false_none"),
        recall_on_judge_accepted=accepted["recall"],
    )
    heldout = {}
    if report.get("goemotions"):
        go = report["goemotions"]
        heldout["goemotions"] = {key: go[key] for key in HELDOUT_SUMMARY_KEYS} | {
            "split": go["split"],
            "recall": {label: cell["recall"] for label, cell in go["per_label"].items()},
        }
    if report.get("statements"):
        st = report["statements"]
        heldout["statements"] = {key: st[key] for key in HELDOUT_SUMMARY_KEYS} | {
            "named_per_label": st["named_per_label"]
        }
    if heldout:
        figures["heldout"] = heldout
    return figures


def evaluate_scorer(
    scorer: Scorer,
    data_dir=None,
    heldout: bool = True,
    stress: bool = False,
    stress_runs: Sequence[str | Path] = (),
    store: bool = True,
) -> dict:
    """(a), and with `heldout` (b) and (c) where the scorer gives probabilities, and with `stress` or
    `stress_runs` (d). With `store`, the summary goes beside the weights."""
    report: dict = {"agreement": evaluate_agreement(scorer, data_dir=data_dir, store=False)}
    if heldout and _local(scorer):
        try:
            report["goemotions"] = evaluate_goemotions(scorer)
        except UserError as exc:  # offline without the GoEmotions files: the other measurements still count
            print(f"sev-bench: GoEmotions test skipped: {exc}", file=sys.stderr)
        if "none" in scorer.labels:
            report["statements"] = evaluate_statements(scorer)
    if stress or stress_runs:
        report["stress"] = evaluate_stress(scorer, build_stress_sets(data_dir, runs=stress_runs))
    report["summary"] = summary(report)
    if store:
        scorer.store_agreement(report["summary"])
    return report


def format_report(report: dict) -> str:
    parts = [format_agreement(report["agreement"])]
    if report.get("goemotions") or report.get("statements"):
        parts.append(format_heldout(report.get("goemotions"), report.get("statements")))
    if report.get("stress"):
        parts.append(format_stress(report["stress"]))
    return "\n".join(parts)
