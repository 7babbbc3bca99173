"""Per-model bounds of the fluency gate: measured once per model on dev data, stored, recorded in results.

The gate's perplexity bound depends on the model that measures it (a larger model gives fluent text a
lower perplexity), so each model gets its own, measured the same way (`sev-bench fluency calibrate`):

- **Fluent text**, all of it from the dev split (the test split only measures):
  - the model's own replies in a finished `none` run on dev (one per event), minus those the text checks
    already reject (a repeated word 4-gram, a character loop): what this model writes when nothing asks
    for an emotion;
  - the paper's judge-accepted Llama-3.2-3B replies of the dev skeletons, one per event (a seeded draw
    among its six emotions): fluent *emotional* text, so the bound does not reject emotion itself.
- **Broken text** made from the same texts: every third pair of adjacent words swapped (mildly broken),
  and all words shuffled.
- Every text's perplexity under the model, conditioned on its row's neutral chat
  (`fluency.gate_conversation`), exactly as the gate measures replies.
- Bound = the geometric midpoint of the fluent `FLUENT_PERCENTILE`th percentile and the lowest
  `BROKEN_PERCENTILE`th percentile of the broken kinds. Calibration fails when the two overlap.

The file (`sev_bench/calibration/<model id>.json`) holds the bound, the percentiles, the counts and the
model's revision; a run on that model and revision uses it and records it (`spec.fluency`). A model without
one (the tiny test models, a new model) runs with `DEFAULT_THRESHOLDS` and its results say "uncalibrated".
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np

from . import data
from .atomic import write_text_atomic
from .errors import UserError
from .fluency import (
    DEFAULT_THRESHOLDS,
    GATE_CHAT,
    FluencyThresholds,
    gate_conversation,
    reply_perplexities,
    text_stats,
)
from .prompts import NEUTRAL_SYSTEM

CALIBRATION_DIR = Path(__file__).parent / "calibration"
FORMAT = "sev_bench.fluency-calibration/1"
FLUENT_PERCENTILE = 99
BROKEN_PERCENTILE = 5


def calibration_path(model_id: str) -> Path:
    return CALIBRATION_DIR / f"{model_id.replace('/', '__')}.json"


def gate_for(model: dict) -> tuple[FluencyThresholds, dict]:
    """The gate for a model (`spec.model`-like: `id`, `revision`) and what results record about it."""
    path = calibration_path(model["id"])
    base = {"perplexity_chat": GATE_CHAT, "system_prompt": NEUTRAL_SYSTEM}
    if not path.is_file():
        return DEFAULT_THRESHOLDS, {
            **base,
            "calibrated": False,
            "max_perplexity": DEFAULT_THRESHOLDS.max_perplexity,
            "note": f"no calibration for {model['id']}: the default bound (measured on SmolLM2-135M) applies",
        }
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise UserError(f"{path} is not a fluency calibration ({FORMAT}); run `sev-bench fluency calibrate` again")
    if record["model"]["revision"] != model.get("revision"):
        return DEFAULT_THRESHOLDS, {
            **base,
            "calibrated": False,
            "max_perplexity": DEFAULT_THRESHOLDS.max_perplexity,
            "note": f"{path.name} was calibrated on revision {record['model']['revision']}, not this one",
        }
    thresholds = FluencyThresholds(max_perplexity=record["max_perplexity"])
    return thresholds, {
        **base,
        "calibrated": True,
        "max_perplexity": thresholds.max_perplexity,
        "file": f"sev_bench/calibration/{path.name}",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rule": record["rule"],
    }


def _broken(texts: list[str], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    swapped, shuffled = [], []
    for text in texts:
        words = text.split()
        pairs = list(words)
        for position in range(0, len(pairs) - 1, 3):
            pairs[position], pairs[position + 1] = pairs[position + 1], pairs[position]
        swapped.append(" ".join(pairs))
        mixed = list(words)
        rng.shuffle(mixed)
        shuffled.append(" ".join(mixed))
    return {"neighbours swapped": swapped, "words shuffled": shuffled}


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 4) for p in (1, 5, 25, 50, 75, 95, 99)}


def none_dev_model(none_run: Path) -> dict:
    """`spec.model` of `none_run` once it is known to be a finished `none` run on dev with the neutral chat
    (checked before any model loads)."""
    results_path = none_run / "results.json"
    if not results_path.is_file():
        raise UserError(f"{none_run} has no results.json; calibrate from a finished `none` run on the dev split")
    spec = json.loads(results_path.read_text(encoding="utf-8"))["spec"]
    if spec["method"]["name"] != "none" or spec["dataset"]["split"] != "dev":
        raise UserError(f"{none_run} is a {spec['method']['name']} run on {spec['dataset']['split']}; need none on dev")
    if spec["method"]["params"].get("system_prompt") != NEUTRAL_SYSTEM:
        raise UserError(f"{none_run} used another system prompt than the neutral chat; rerun `none` with defaults")
    return spec["model"]


def fluent_texts(none_run: Path, model: dict, data_dir=None, seed: int = 0) -> tuple[list[str], list[dict], dict]:
    """The fluent texts (see module docstring), their SEV rows, and counts."""
    made_by = none_dev_model(none_run)
    if (made_by["id"], made_by["revision"]) != (model["id"], model["revision"]):
        raise UserError(f"{none_run} was made by {made_by['id']}, not {model['id']} (this revision)")
    rows = {row["id"]: row for row in data.load_sev(data_dir)["dev"]}
    own: dict[str, tuple[str, dict]] = {}
    for line in (none_run / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        row = rows[sample["id"]]
        own.setdefault(f"{row['skeleton_id']}/{row['valence']}", (sample["completion"], row))
    kept = [(text, row) for text, row in own.values() if _passes_text_checks(text)]
    dev_ids = {s["skeleton_id"] for s in data.load_skeletons(data_dir)["dev"]}
    by_event: dict[str, list[dict]] = {}
    for reference in data.load_reference("train", data_dir):
        if reference["skeleton_id"] in dev_ids and reference["judge"]["match"] == 1:
            by_event.setdefault(f"{reference['skeleton_id']}/{reference['valence']}", []).append(reference)
    rng = random.Random(seed)
    references = [rng.choice(by_event[event]) for event in sorted(by_event)]
    texts = [text for text, _ in kept] + [r["gen_text"] for r in references]
    chat_rows = [row for _, row in kept] + [{"scenario": r["scenario"], "event": r["event"]} for r in references]
    counts = {"own_none_replies": len(own), "own_kept": len(kept), "dev_references": len(references)}
    return texts, chat_rows, counts


def _passes_text_checks(text: str) -> bool:
    stats = text_stats(text)
    return stats["n_words"] >= 1 and not stats["repeated_4gram"] and not stats["char_loop"]


def calibrate(loaded, none_run: Path, model: dict, data_dir=None, seed: int = 0, batch_size: int = 16) -> dict:
    """Measure the bound for `loaded` (see module docstring) and return the calibration record."""
    texts, chat_rows, counts = fluent_texts(none_run, model, data_dir, seed)
    if len(texts) < 50:
        raise UserError(f"only {len(texts)} fluent dev texts; calibrate from a full `none` run on dev")
    conversations = [gate_conversation(row) for row in chat_rows]
    kinds = {"fluent": texts, **_broken(texts, seed + 1)}
    measured = {}
    for name, kind_texts in kinds.items():
        values = reply_perplexities(loaded, conversations, kind_texts, batch_size=batch_size)
        measured[name] = [v for v in values if v is not None]
    fluent_high = float(np.percentile(measured["fluent"], FLUENT_PERCENTILE))
    broken_low = min(float(np.percentile(v, BROKEN_PERCENTILE)) for k, v in measured.items() if k != "fluent")
    if fluent_high >= broken_low:
        raise UserError(
            f"fluent p{FLUENT_PERCENTILE} ({fluent_high:.1f}) is not below broken p{BROKEN_PERCENTILE} "
            f"({broken_low:.1f}): perplexity does not separate them on this model; no bound written"
        )
    bound = round(math.sqrt(fluent_high * broken_low), 2)
    return {
        "format": FORMAT,
        "model": {"id": model["id"], "revision": model["revision"]},
        "max_perplexity": bound,
        "rule": (
            f"geometric midpoint of the fluent dev texts' p{FLUENT_PERCENTILE} and the lowest "
            f"p{BROKEN_PERCENTILE} of the broken kinds, perplexity under the neutral chat"
        ),
        "fluent_percentile": FLUENT_PERCENTILE,
        "broken_percentile": BROKEN_PERCENTILE,
        "none_run": none_run.as_posix(),
        "seed": seed,
        "counts": counts,
        "perplexity": {name: _percentiles(values) for name, values in measured.items()},
        "below_bound": {
            name: round(sum(v < bound for v in values) / len(values), 4) for name, values in measured.items()
        },
    }


def write_calibration(record: dict, out_dir: Path | None = None) -> Path:
    path = (out_dir or CALIBRATION_DIR) / calibration_path(record["model"]["id"]).name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
