"""Every built-in scorer measured the same four ways, side by side: the figures behind the default scorer.

    python benchmarks/scorers.py                          # minilm-emotions, minilm-finetuned, minilm-probe
    python benchmarks/scorers.py --scorer minilm-emotions # one scorer

For each scorer, `sev-bench scorer eval --stress` with every dev-split run under `reports/scorers/dev-runs/`
as a stress set writes `reports/scorers/<scorer>/` (report.md, one JSON per measurement, confusion PNGs);
then `reports/scorers/README.md` gets the comparison table. Scorers that are not trained yet train first
(minutes each). The measurements: (a) the paper's judge on the test split's reference replies, (b)
GoEmotions test under the Ekman grouping, (c) the plain statements, (d) stress sets from the dev split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sev_bench.atomic import write_text_atomic
from sev_bench.cli import main as sev_bench

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "scorers"
DEV_RUNS = OUT / "dev-runs"
SCORERS = ("minilm-emotions", "minilm-finetuned", "minilm-probe")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _row(name: str) -> str:
    folder = OUT / name
    agreement = json.loads((folder / "agreement.json").read_text())
    accepted = agreement["judge_accepted"]
    go = json.loads((folder / "goemotions.json").read_text())
    statements_file = folder / "statements.json"
    statements = json.loads(statements_file.read_text()) if statements_file.is_file() else None
    stress = json.loads((folder / "stress.json").read_text())["sets"]
    named = statements["named_per_label"] if statements else {}
    non_fluent = [cell for set_name, cell in stress.items() if "(non-fluent)" in set_name and cell.get("n")]
    fooled = sum(cell["hit_rate"] * cell["n"] for cell in non_fluent) / max(1, sum(c["n"] for c in non_fluent))
    cells = [
        name,
        _pct(accepted["recall"] and min(v for v in accepted["recall"].values() if v is not None)),
        _pct(agreement["overall"]["accuracy_on_judge_accepted"]),
        f"{agreement['overall']['cohen_kappa']:.3f}",
        "-" if accepted.get("ece") is None else f"{accepted['ece']:.3f}",
        f"{go['macro_f1']:.3f}",
        "-" if go.get("ece") is None else f"{go['ece']:.3f}",
        _pct(go.get("none_on_neutral")),
        _pct(go.get("false_none_on_emotional")),
        _pct(min((v for k, v in named.items() if k != "none"), default=None)),
        _pct(named.get("none")),
        _pct(stress["neutral"]["predicted_share"].get("none")),
        _pct(fooled if non_fluent else None),
    ]
    return "| " + " | ".join(cells) + " |"


def table(names) -> str:
    head = [
        "scorer",
        "(a) lowest per-emotion recall %",
        "(a) acc on judge-accepted %",
        "(a) kappa",
        "(a) ECE",
        "(b) GoEmotions macro-F1",
        "(b) ECE",
        "(b) none on neutral %",
        "(b) false none %",
        "(c) lowest emotion named %",
        "(c) none on emotionless %",
        "(d) none on dev neutral %",
        "(d) hits on non-fluent dev replies %",
    ]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1), *map(_row, names)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", action="append", help="scorer(s) to measure (default: all built-in)")
    args = parser.parse_args()
    names = args.scorer or list(SCORERS)
    runs = sorted(p for p in DEV_RUNS.iterdir() if (p / "samples.jsonl").is_file()) if DEV_RUNS.is_dir() else []
    for name in names:
        command = ["scorer", "eval", "--scorer", name, "--stress", "--output-dir", str(OUT / name)]
        for run in runs:
            command += ["--stress-run", str(run)]
        if sev_bench(command) != 0:
            raise SystemExit(f"scorer eval failed for {name}")
    measured = [name for name in SCORERS if (OUT / name / "goemotions.json").is_file()]
    text = table(measured)
    readme = OUT / "README.md"
    intro = readme.read_text(encoding="utf-8").split("<!-- table -->")[0] if readme.is_file() else "# Scorers\n\n"
    write_text_atomic(readme, intro + "<!-- table -->\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
