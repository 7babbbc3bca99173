"""`sev-bench rescore RUN_DIR --scorer NAME`: score a finished run's saved replies again, without
generating anything.

The result is a run directory of its own (default: `RUN_DIR-<scorer id>`, beside the original) that the leaderboard,
`compare` and `check` read like any other: the same replies and fluency records with the new scorer's
`predicted_emotion`, `probs` and `correct`; `results.json` with the new scorer in `spec.scorer`, metrics
recomputed, and a `rescore` block naming the original scorer, its overall accuracy and the sha256 of the
original `results.json`. Every reply must be scored: a judge that fails on some replies makes the command
stop (rerun it: verdicts already obtained come from the judge's cache), so a rescored run is never partial.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .fluency import DEFAULT_THRESHOLDS, aggregate_fluency
from .metrics import empty_replies, fluent_accuracy, grouped_accuracy, predicted_share
from .results import RunDir, load_results, summary_markdown
from .scoring.base import Scorer

SCORE_BATCH = 256
SCORER_FIELDS = ("predicted_emotion", "probs", "correct", "score_error")


def read_samples(run_dir: Path, expected: int) -> list[dict]:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no samples.jsonl; rescore needs the run's saved replies")
    samples, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            sample = json.loads(line)
            sample["completion"], sample["target_emotion"]  # noqa: B018  (both must be there)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a sev-bench sample (completion, target_emotion)") from None
        if sample.get("id") in seen:
            raise UserError(f"{path}:{number}: sample id {sample['id']!r} is there twice; not a clean run")
        seen.add(sample.get("id"))
        samples.append(sample)
    if len(samples) != expected:
        raise UserError(f"{path} has {len(samples)} samples, its results.json counts {expected}; not a finished run")
    return samples


def rescore(
    run_dir: str | Path, scorer: Scorer, output_dir: str | Path | None = None, progress: bool = True
) -> tuple[dict, Path]:
    """Rescore the finished run in `run_dir` with `scorer`; returns (results, output dir)."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise UserError(f"{run_dir}: no results.json; rescore works on finished runs (finish it with `sev-bench run`)")
    original = load_results(run_dir)
    original_sha256 = hashlib.sha256((run_dir / "results.json").read_bytes()).hexdigest()
    n = original["spec"]["dataset"]["n"]
    samples = read_samples(run_dir, n)
    out = Path(output_dir) if output_dir else run_dir.with_name(f"{run_dir.name}-{scorer.id.replace('/', '_')}")
    if out.resolve() == run_dir.resolve():
        raise UserError("--output-dir must differ from the run dir: rescore never overwrites the original")

    started = time.perf_counter()
    rescored = []
    with tqdm(total=len(samples), desc=f"rescoring with {scorer.id}", unit="reply", disable=not progress) as bar:
        for start in range(0, len(samples), SCORE_BATCH):
            batch = samples[start : start + SCORE_BATCH]
            scores = scorer.score([s["completion"] for s in batch], [s["target_emotion"] for s in batch])
            for sample, score in zip(batch, scores, strict=True):
                kept = {k: v for k, v in sample.items() if k not in SCORER_FIELDS}
                rescored.append({**kept, **score})
            bar.update(len(batch))
    scorer.check_failures()
    failed = sum(s["correct"] is None for s in rescored)
    if failed:
        raise UserError(
            f"{failed} of {len(rescored)} replies could not be scored by {scorer.id}; rerun rescore (scores "
            "already obtained are cached) or raise the scorer's failure tolerance"
        )

    identity_path = run_dir / "run.json"
    identity = json.loads(identity_path.read_text(encoding="utf-8")) if identity_path.is_file() else None
    if identity is not None:
        identity["scorer"] = {"id": scorer.id, "sha256": scorer.sha256}
    results = copy.deepcopy(original)
    results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["spec"]["scorer"] = scorer.info()
    metrics = results["metrics"]
    metrics["accuracy"] = grouped_accuracy(rescored)
    metrics["predicted_share"] = predicted_share(rescored)
    metrics["empty_replies"] = empty_replies(rescored)
    if all("fluency" in s for s in rescored):
        metrics["fluency"] = aggregate_fluency(rescored, DEFAULT_THRESHOLDS)
        metrics["accuracy_fluent"] = fluent_accuracy(rescored)
    results["rescore"] = {
        "from_dir": run_dir.name,
        "from_results_sha256": original_sha256,
        "from_scorer": original["spec"]["scorer"],
        "from_accuracy_overall": original["metrics"]["accuracy"]["overall"],
        "scoring_s": round(time.perf_counter() - started, 3),
    }
    results["samples_file"] = "samples.jsonl"

    target = RunDir(out)
    target.lock()
    try:
        if target.results_path.exists() or target.samples_path.exists():
            raise UserError(f"--output-dir {out} already holds results; remove it or choose another")
        if identity is not None:
            target.claim(identity)
        target.finish(rescored, results, summary_markdown(results), rewrite_samples=True)
    finally:
        target.release()
    return results, out
