"""leaderboard.csv: one row per entry in board order, every figure to six decimals, an empty field where
a run has no value."""

from __future__ import annotations

import csv
import io
import math

from ..prompts import EMOTIONS, VALENCES
from .entry import Entry
from .ordering import grouped


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


CSV_COLUMNS = (
    ["model", "selection", "method", "run_dir", "n", "fluent", "fluent_ci_low", "fluent_ci_high"]
    + ["raw", "raw_ci_low", "raw_ci_high", "fluent_share"]
    + [f"fluent_{group}" for group in (*VALENCES, *EMOTIONS)]
    + [f"raw_{group}" for group in (*VALENCES, *EMOTIONS)]
    + ["scorer", "scorer_sha256", "scorer_agreement", "backend", "dtype", "decoding", "own_decoding"]
    + ["date", "config_hash", "samples_checked"]
)


def leaderboard_csv(entries: list[Entry]) -> str:
    """One row per entry, in board order (fluent accuracy first); an empty field where a run has no value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    groups = [("by_valence", v) for v in VALENCES] + [("by_emotion", e) for e in EMOTIONS]
    for (model, selection), members in grouped(entries):
        for entry in members:
            accuracy = entry.accuracy
            overall, fluent = accuracy["overall"], entry.fluent
            fluent_ci = fluent["ci95"] if fluent and fluent.get("ci95") else [None, None]
            writer.writerow(
                [model, selection, entry.method, entry.path, overall["n"]]
                + [_num(fluent["acc"] if fluent else None), _num(fluent_ci[0]), _num(fluent_ci[1])]
                + [_num(overall["acc"]), _num(overall["ci95"][0]), _num(overall["ci95"][1]), _num(entry.fluent_share)]
                + [_num((entry.fluent_group(block, name) or {}).get("acc")) for block, name in groups]
                + [_num((accuracy[block].get(name) or {}).get("acc")) for block, name in groups]
                + [entry.spec["scorer"]["id"], entry.spec["scorer"]["sha256"], _num(entry.scorer_agreement)]
                + [entry.spec["backend"]["name"], entry.spec["model"].get("dtype", ""), entry.decoding]
                + [str(entry.own_decoding).lower(), entry.date, entry.config_hash, str(entry.samples_checked).lower()]
            )
    return buffer.getvalue()
