"""`sev-bench fluency regate RUN_DIR`: redraw a finished run's fluency verdicts under today's gate.

The gate measures every reply's perplexity under the neutral chat (`fluency.gate_conversation`) with the
run's own model and applies that model's calibrated bound (`fluency_calibration.gate_for`) and the text
checks (repeated word 4-gram, character loop). Runs made before the gate was method-neutral measured
perplexity under each method's own chat; this measures it again (records already measured under the
neutral chat keep their perplexity) and writes a run dir of its own, like `rescore`: the same replies and
scores, new fluency records, metrics recomputed, and a `regate` block with the verdicts that changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from . import data
from .errors import UserError
from .fluency import aggregate_fluency, has_gate_perplexity, measure_samples, regate_samples
from .fluency_calibration import gate_for
from .metrics import fluent_accuracy
from .models import load_model
from .rescore import read_samples
from .results import RunDir, load_results, summary_markdown


def regate_run(
    run_dir: str | Path,
    output_dir: str | Path,
    data_dir=None,
    threads: int | None = None,
    batch_size: int = 16,
) -> tuple[dict, Path]:
    """Regate the finished run in `run_dir` into `output_dir`; returns (results, output dir)."""
    run_dir, out = Path(run_dir), Path(output_dir)
    if not (run_dir / "results.json").is_file():
        raise UserError(f"{run_dir}: no results.json; regate works on finished runs")
    if out.resolve() == run_dir.resolve():
        raise UserError("--output-dir must differ from the run dir: regate never overwrites the original")
    if (out / "results.json").exists() or (out / "samples.jsonl").exists():  # before any measuring
        raise UserError(f"--output-dir {out} already holds results; remove it or choose another")
    original = load_results(run_dir)
    original_sha256 = hashlib.sha256((run_dir / "results.json").read_bytes()).hexdigest()
    spec = original["spec"]
    samples = read_samples(run_dir, spec["dataset"]["n"])
    rows = {row["id"]: row for row in data.load_sev(data_dir)[spec["dataset"]["split"]]}
    missing = [s["id"] for s in samples if s["id"] not in rows]
    if missing:
        raise UserError(f"{run_dir}: {len(missing)} sample ids are not in SEV {spec['dataset']['split']}")

    started = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    model = spec["model"]
    thresholds, gate_info = gate_for(model)
    before = [bool(s.get("fluency", {}).get("fluent")) for s in samples]
    todo = [s for s in samples if not has_gate_perplexity(s.get("fluency"))]
    measured = 0
    if todo:
        loaded = load_model(model["id"], dtype=model["dtype"], device="cpu")
        if loaded.revision != model["revision"]:
            raise UserError(f"{model['id']} is now revision {loaded.revision}, the run used {model['revision']}")
        measured = measure_samples(loaded, rows, todo, thresholds, batch_size)
    regate_samples(samples, thresholds)
    after = [s["fluency"]["fluent"] for s in samples]

    results = copy.deepcopy(original)
    results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["spec"]["fluency"] = gate_info
    results["metrics"]["fluency"] = aggregate_fluency(samples, thresholds)
    results["metrics"]["accuracy_fluent"] = fluent_accuracy(samples)
    results["regate"] = {
        "from_dir": run_dir.name,
        "from_results_sha256": original_sha256,
        "from_fluent_share": original["metrics"].get("fluency", {}).get("fluent_share"),
        "from_accuracy_fluent_overall": original["metrics"].get("accuracy_fluent", {}).get("overall"),
        "replies_measured": measured,
        "verdicts_changed": sum(b != a for b, a in zip(before, after)),
        "fluent_to_not": sum(b and not a for b, a in zip(before, after)),
        "not_to_fluent": sum(a and not b for b, a in zip(before, after)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    target = RunDir(out)
    target.lock()
    try:
        if target.results_path.exists() or target.samples_path.exists():
            raise UserError(f"--output-dir {out} already holds results; remove it or choose another")
        identity_path = run_dir / "run.json"
        if identity_path.is_file():
            target.claim(json.loads(identity_path.read_text(encoding="utf-8")))
        target.finish(samples, results, summary_markdown(results), rewrite_samples=True)
    finally:
        target.release()
    return results, out
