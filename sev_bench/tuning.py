"""`sev-bench tune`: choose a method's hyper-parameters on the dev split, never on the test split.

Every point of the grid is an ordinary (resumable) run on the dev split, in `OUT/runs/<point>/`. The
objective is fluent accuracy (a reply counts only if it names the target emotion and passes the fluency
gate) when the runs have fluency metrics, else raw accuracy; ties keep the earlier grid point. The
winner is written as a method config, `OUT/tuned.yaml`, that `sev-bench run --method OUT/tuned.yaml`
takes, next to the dev table (`OUT/tuning.md`, `OUT/tuning.json`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .atomic import write_json_atomic, write_text_atomic
from .errors import UserError
from .methods import resolve_method
from .methods.config import parse_overrides
from .prompts import VALENCES
from .runner import RunRequest, run

TUNING_SPLIT = "dev"  # fixed: the test split is for reporting only


@dataclass
class TuneRequest:
    method: str
    grid: dict[str, list[str]]
    output_dir: str
    run: RunRequest = field(default_factory=RunRequest)  # model, limit, scorer, batch size, ... (split ignored)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["alpha=2,4,8", "layers=8-17,12-21"] -> {"alpha": ["2", "4", "8"], "layers": [...]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()] if sep else []
        if not key.strip() or not choices:
            raise UserError(f"--grid {item!r}: expected key=v1,v2,... (e.g. alpha=2,4,8)")
        if key.strip() in grid:
            raise UserError(f"--grid {key.strip()} is given twice")
        grid[key.strip()] = choices
    if not grid:
        raise UserError("give at least one --grid key=v1,v2,...")
    return grid


def _objective(metrics: dict) -> tuple[str, float]:
    fluent = metrics.get("accuracy_fluent")
    if fluent:
        return "fluent accuracy", fluent["overall"]["acc"]
    return "accuracy", metrics["accuracy"]["overall"]["acc"]


def tune(request: TuneRequest) -> dict:
    """Run every grid point on dev, pick the best, write tuned.yaml + the table. Returns the summary."""
    base_overrides = list(request.run.overrides)
    for key in request.grid:
        if key in parse_overrides(base_overrides):
            raise UserError(f"{key} is both in --grid and --set; give it in one place")
    points = [dict(zip(request.grid, values)) for values in itertools.product(*request.grid.values())]
    for point in points:  # validate every point before the first (slow) run
        resolve_method(request.method, [*base_overrides, *(f"{k}={v}" for k, v in point.items())])

    out = Path(request.output_dir)
    rows = []
    for number, point in enumerate(points):
        overrides = [*base_overrides, *(f"{k}={v}" for k, v in point.items())]
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        print(f"[{number + 1}/{len(points)}] {request.method} {label} on the {TUNING_SPLIT} split", flush=True)
        point_request = replace(
            request.run,
            method=request.method,
            split=TUNING_SPLIT,
            overrides=overrides,
            output_dir=str(out / "runs" / f"point-{number:02d}"),
        )
        results, run_dir = run(point_request)
        objective_name, objective = _objective(results["metrics"])
        accuracy = results["metrics"]["accuracy"]
        fluency = results["metrics"].get("fluency") or {}
        rows.append(
            {
                "point": point,
                "run_dir": str(run_dir),
                "objective": objective,
                "objective_name": objective_name,
                "accuracy": accuracy["overall"]["acc"],
                "by_valence": {v: accuracy["by_valence"][v]["acc"] for v in VALENCES if v in accuracy["by_valence"]},
                "fluent_share": fluency.get("fluent_share"),
                "n": accuracy["overall"]["n"],
                "config": resolve_method(request.method, overrides),
            }
        )
    best = max(rows, key=lambda row: row["objective"])  # max keeps the first of equal values
    config = best["config"]
    tuned = {
        "method": config.method.name,
        "description": f"{config.description} (tuned on dev: "
        + ", ".join(f"{k}={v}" for k, v in best["point"].items())
        + f", dev {best['objective_name']} {best['objective']:.3f})",
        "params": dict(config.method.params),
    }
    if config.generation_declared:
        tuned["generation"] = {"max_new_tokens": config.generation.max_new_tokens, **config.generation.extra}
    header = (
        f"# Tuned on dev ({TUNING_SPLIT} split; the test split is never read)\n"
        f"# base: {request.method}; grid: {request.grid}; objective: {best['objective_name']}\n"
    )
    write_text_atomic(out / "tuned.yaml", header + yaml.safe_dump(tuned, sort_keys=False, allow_unicode=True))
    summary = {
        "method": request.method,
        "split": TUNING_SPLIT,
        "grid": request.grid,
        "limit": request.run.limit,
        "model": request.run.model,
        "objective": best["objective_name"],
        "chosen": best["point"],
        "points": [{k: v for k, v in row.items() if k != "config"} for row in rows],
    }
    write_json_atomic(out / "tuning.json", summary)
    write_text_atomic(out / "tuning.md", tuning_markdown(summary))
    return summary


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def tuning_markdown(summary: dict) -> str:
    keys = list(summary["grid"])
    rows_note = f"first {summary['limit']} rows" if summary["limit"] else "all rows"
    lines = [
        f"# Tuning {summary['method']} on the dev split ({summary['model']}, {rows_note})",
        "",
        f"Objective: **{summary['objective']}**; chosen: "
        + ", ".join(f"`{k}={v}`" for k, v in summary["chosen"].items())
        + " (written to `tuned.yaml`).",
        "",
        "| " + " | ".join(keys) + " | n | accuracy % | fluent share % | objective % | positive | neutral | negative |",
        "| " + " | ".join("---" for _ in keys) + " | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["points"]:
        chosen = " **(chosen)**" if row["point"] == summary["chosen"] else ""
        lines.append(
            "| "
            + " | ".join(row["point"][k] for k in keys)
            + f" | {row['n']} | {_pct(row['accuracy'])} | {_pct(row['fluent_share'])} | {_pct(row['objective'])}"
            + chosen
            + " | "
            + " | ".join(_pct(row["by_valence"].get(v)) for v in VALENCES)
            + " |"
        )
    return "\n".join(lines) + "\n"
