"""Small synthetic run dirs (results.json + samples.jsonl + summary.md) for leaderboard/compare/check tests.

The samples are 2 skeletons x 3 valences x 6 emotions = 36 rows; `correct(index, valence, emotion)` decides
each row's outcome, and the metrics are computed with sev_bench.metrics exactly as `sev-bench run` does.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from sev_bench.data import PINNED_COMMIT, SEV_FILES
from sev_bench.metrics import grouped_accuracy
from sev_bench.prompts import EMOTIONS, VALENCES
from sev_bench.results import summary_markdown

SKELETONS = ("work_test_00", "school_test_00")


def make_samples(
    correct: Callable[[int, str, str], bool] = lambda i, v, e: i % 3 == 0,
    fluent: Callable[[int], bool] | None = None,
) -> list[dict]:
    """36 samples; with `fluent`, each carries a fluency record (`fluency.fluent`) as `sev-bench run` writes."""
    samples = []
    for skeleton in SKELETONS:
        for valence in VALENCES:
            for emotion in EMOTIONS:
                index = len(samples)
                right = bool(correct(index, valence, emotion))
                predicted = emotion if right else ("happiness" if emotion != "happiness" else "anger")
                samples.append(
                    {
                        "id": f"{skeleton}__{valence}__{emotion}",
                        "skeleton_id": skeleton,
                        "theme": "Work/Job",
                        "valence": valence,
                        "target_emotion": emotion,
                        "completion": f"reply {index}",
                        "predicted_emotion": predicted,
                        "probs": {e: (0.5 if e == predicted else 0.1) for e in EMOTIONS},
                        "correct": right,
                    }
                )
                if fluent is not None:
                    samples[-1]["fluency"] = {"fluent": bool(fluent(index))}
    return samples


def make_spec(
    method: str = "prompting",
    model: str = "model-a",
    n: int = 36,
    scorer_sha256: str = "a" * 64,
    generation: dict | None = None,
    limit: int | None = None,
) -> dict:
    generation = generation or {"do_sample": False, "max_new_tokens": 100}
    config_hash = hashlib.sha256(json.dumps([method, generation], sort_keys=True).encode()).hexdigest()[:16]
    return {
        "method": {
            "name": method,
            "implementation": method,
            "kind": "prompt",
            "params": {},
            "generation": generation,
            "config_hash": config_hash,
        },
        "model": {"id": model, "revision": "r1", "dtype": "float32"},
        "backend": {"name": "hf", "batch_size": 16},
        "generation": {
            **generation,
            "policy": "benchmark-default"
            if generation == {"do_sample": False, "max_new_tokens": 100}
            else "method-declared",
            "chat_template_sha256": "c" * 64,
        },
        "dataset": {
            "name": "SEV",
            "commit": PINNED_COMMIT,
            "split": "test",
            "sha256": {name: pinned.sha256 for name, pinned in SEV_FILES.items()},
            "selection": {"emotions": list(EMOTIONS), "valences": list(VALENCES), "limit": limit},
            "n": n,
        },
        "scorer": {
            "id": "test-keywords",
            "sha256": scorer_sha256,
            "labels": list(EMOTIONS),
            "agreement": {"agreement": 0.9},
        },
        "fluency": {"perplexity_chat": "neutral", "calibrated": True, "max_perplexity": 90.0},
        "seed": 1234,
        "hardware": {"device": "cpu"},
        "software": {},
        "git": {"commit": None, "dirty": None},
        "command": ["run", "--method", method, "--model", model],
    }


def results_for(samples: list[dict], spec: dict) -> dict:
    metrics = {"accuracy": grouped_accuracy(samples)}
    if samples and all("fluency" in s for s in samples):
        metrics["accuracy_fluent"] = grouped_accuracy(
            {**s, "correct": s["correct"] and s["fluency"]["fluent"]} for s in samples
        )
    return {
        "schema_version": "1.0",
        "created": "2026-01-02T03:04:05+00:00",
        "spec": spec,
        "metrics": metrics,
        "timings": {"generation_s": 1.0, "scoring_s": 0.5, "total_s": 2.0},
        "samples_file": "samples.jsonl",
    }


def write_run(run_dir: Path, samples: list[dict] | None = None, results: dict | None = None, **spec) -> Path:
    """A complete run dir; `results` (when given) is written as it is, else computed from the samples."""
    samples = make_samples() if samples is None else samples
    results = results or results_for(samples, make_spec(n=len(samples), **spec))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (run_dir / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    return run_dir


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return results, samples


def degraded_copy(source: Path, target: Path, valence: str, flips: int) -> Path:
    """A copy of a run dir whose first `flips` correct replies in `valence` become wrong, with the metrics
    recomputed from the changed samples (a consistent, worse run)."""
    results, samples = read_run(source)
    left = flips
    for sample in samples:
        if left and sample["valence"] == valence and sample["correct"]:
            sample["correct"] = False
            sample["predicted_emotion"] = "happiness" if sample["target_emotion"] != "happiness" else "anger"
            left -= 1
    if left:
        raise ValueError(f"{source} has fewer than {flips} correct {valence} replies")
    results = copy.deepcopy(results)
    results["metrics"]["accuracy"] = grouped_accuracy(samples)
    return write_run(target, samples, results)
