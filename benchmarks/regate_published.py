"""Regate published runs under the method-neutral fluency gate and tabulate what changed.

    python benchmarks/regate_published.py leaderboards/smollm2-135m/none-test720 ... [--replace] [--threads 1]

For each run dir: `sev-bench fluency regate` into a temporary dir (perplexity of every reply under the
neutral chat with the run's own model, the model's calibrated bound, the character-loop check), then one
row of before / after: fluent share, fluent accuracy overall, verdicts changed in each direction. With
`--replace` the regated run takes the published dir's place (its `results.json` keeps a `regate` block
with the sha256 of the one it replaced). The table is appended to `reports/fluency/regate.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from sev_bench.regate import regate_run

REPORT = Path(__file__).resolve().parents[1] / "reports" / "fluency" / "regate.md"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--replace", action="store_true", help="put each regated run in the published dir's place")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for run_dir in args.run_dirs:
        with tempfile.TemporaryDirectory(dir=run_dir.parent, prefix=f".{run_dir.name}-regate-") as staging:
            out = Path(staging) / run_dir.name
            results, _ = regate_run(run_dir, out, threads=args.threads)
            block = results["regate"]
            before_acc = (block["from_accuracy_fluent_overall"] or {}).get("acc")
            after_acc = results["metrics"]["accuracy_fluent"]["overall"]["acc"]
            rows.append(
                f"| {run_dir.as_posix()} | {results['spec']['fluency']['max_perplexity']} | "
                f"{_pct(block['from_fluent_share'])} -> {_pct(results['metrics']['fluency']['fluent_share'])} | "
                f"{_pct(before_acc)} -> {_pct(after_acc)} | {block['verdicts_changed']} of "
                f"{results['spec']['dataset']['n']} ({block['fluent_to_not']} / {block['not_to_fluent']}) | "
                f"{block['replies_measured']} | {block['seconds']:.0f} |"
            )
            print(rows[-1], flush=True)
            if args.replace:
                backup = run_dir.with_name(f".{run_dir.name}-before-regate")
                run_dir.rename(backup)
                shutil.move(str(out), str(run_dir))
                if (backup / "plots").is_dir():  # the run's plots show the scorer's verdicts: unchanged
                    shutil.copytree(backup / "plots", run_dir / "plots")
                shutil.rmtree(backup)
    header = (
        "| run | bound | fluent replies % (before -> after) | fluent accuracy % | verdicts changed (fluent -> not /"
        " not -> fluent) | replies measured | seconds |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    existing = REPORT.read_text(encoding="utf-8") if REPORT.is_file() else ""
    if "| run | bound |" not in existing:
        existing += header
    REPORT.write_text(existing + "".join(row + "\n" for row in rows), encoding="utf-8")
    print(json.dumps({"report": str(REPORT), "rows": len(rows)}))


if __name__ == "__main__":
    main()
