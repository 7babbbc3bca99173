"""`sev-bench check RESULTS --baseline BASE --tolerance T`: the accuracy-regression gate.

Passes (exit 0) when overall accuracy and each valence's accuracy are at most T (absolute, accuracy in
[0, 1]) below the baseline's; an improvement always passes. Fails (exit 1) with a table of what dropped.
Unusable input (a missing or unreadable results file, T outside [0, 1], a run over another split or
selection than the baseline's) is a UserError (exit 2). Differences that can move accuracy without
making the comparison meaningless (method config, scorer sha256, model, decoding, dataset files) are
printed as notes: catching such changes is the point of the check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .leaderboard.entry import decoding_settings
from .prompts import VALENCES
from .results import load_results

EPSILON = 1e-12  # float slack so that a drop of exactly T passes


@dataclass
class CheckRow:
    group: str
    n: int
    baseline: float
    run: float
    change: float
    dropped: bool


@dataclass
class CheckReport:
    rows: list[CheckRow]
    notes: list[str]
    tolerance: float

    @property
    def passed(self) -> bool:
        return not any(row.dropped for row in self.rows)


def _same_selection(run: dict, base: dict) -> None:
    a, b = run["spec"]["dataset"], base["spec"]["dataset"]
    if a.get("split") != b.get("split"):
        raise UserError(f"the run is on split {a.get('split')!r}, the baseline on {b.get('split')!r}")
    if a.get("selection") != b.get("selection") or a.get("n") != b.get("n"):
        raise UserError(
            f"the run's selection ({a.get('selection')}, n={a.get('n')}) is not the baseline's "
            f"({b.get('selection')}, n={b.get('n')}); rerun with the baseline's flags"
        )


def _notes(run: dict, base: dict) -> list[str]:
    sr, sb = run["spec"], base["spec"]
    notes = []
    pairs = [
        ("method config", sr["method"].get("config_hash"), sb["method"].get("config_hash")),
        ("model", sr["model"].get("id"), sb["model"].get("id")),
        ("model revision", sr["model"].get("revision"), sb["model"].get("revision")),
        ("dtype", sr["model"].get("dtype"), sb["model"].get("dtype")),
        ("backend", sr["backend"].get("name"), sb["backend"].get("name")),
        ("decoding", decoding_settings(sr["generation"]), decoding_settings(sb["generation"])),
        ("scorer", sr["scorer"].get("id"), sb["scorer"].get("id")),
        ("scorer sha256", sr["scorer"].get("sha256"), sb["scorer"].get("sha256")),
        ("dataset sha256", sr["dataset"].get("sha256"), sb["dataset"].get("sha256")),
    ]
    for what, mine, theirs in pairs:
        if mine != theirs:
            notes.append(f"{what} differs from the baseline's: {mine} vs {theirs}")
    return notes


def _refuse_repeated_ids(path, results: dict) -> None:
    """A samples file with an id twice (two runs wrote into one dir) means figures that count replies twice."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    samples_path = folder / Path(str(results.get("samples_file", "samples.jsonl"))).name
    if not samples_path.is_file():
        return
    seen = set()
    with open(samples_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                sample_id = json.loads(line).get("id") if line.strip() else None
            except (ValueError, AttributeError):
                raise UserError(f"{samples_path} line {number}: not a sample record") from None
            if sample_id is not None and sample_id in seen:
                raise UserError(f"{samples_path} line {number}: sample id {sample_id!r} is there twice")
            seen.add(sample_id)


def check(results_path, baseline_path, tolerance: float) -> CheckReport:
    if not 0.0 <= tolerance <= 1.0:
        raise UserError(f"--tolerance {tolerance} is outside [0, 1] (accuracy is a share, e.g. 0.05 = 5 points)")
    run = load_results(results_path)
    base = load_results(baseline_path)
    for path, results in ((results_path, run), (baseline_path, base)):
        _refuse_repeated_ids(path, results)
    _same_selection(run, base)
    groups = [("overall", run["metrics"]["accuracy"]["overall"], base["metrics"]["accuracy"]["overall"])]
    run_valence, base_valence = run["metrics"]["accuracy"]["by_valence"], base["metrics"]["accuracy"]["by_valence"]
    for valence in VALENCES:
        if valence in base_valence:
            if valence not in run_valence:
                raise UserError(f"the run has no {valence} samples; the baseline has")
            groups.append((valence, run_valence[valence], base_valence[valence]))
    rows = []
    for name, mine, theirs in groups:
        change = mine["acc"] - theirs["acc"]
        rows.append(CheckRow(name, mine["n"], theirs["acc"], mine["acc"], change, -change > tolerance + EPSILON))
    return CheckReport(rows, _notes(run, base), tolerance)


def check_markdown(report: CheckReport) -> str:
    verdict = "PASS" if report.passed else "FAIL: accuracy dropped beyond the tolerance"
    lines = [
        f"sev-bench check: {verdict} (tolerance {100 * report.tolerance:.1f} points, drops only)",
        "",
        "| group | n | baseline (%) | run (%) | change | status |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report.rows:
        status = "**DROPPED**" if row.dropped else "ok"
        lines.append(
            f"| {row.group} | {row.n} | {100 * row.baseline:.1f} | {100 * row.run:.1f} | "
            f"{100 * row.change:+.1f} | {status} |"
        )
    for note in report.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"
