"""Measure where the fluency gate's perplexity bound belongs (the figures in `sev_bench/fluency.py`).

    SEV_BENCH_DATA_DIR=../shared/sev python benchmarks/fluency_calibration.py   # about 4 min on 1 CPU thread

Fluent text: the paper's judge-accepted Llama-3.2-3B prompting replies of the train split (`sev.jsonl`;
the test split is never used), `--per-theme` of each theme drawn with `--seed`. Broken text, built from
those replies: every third pair of adjacent words swapped (mildly broken); all words shuffled; word
salad (as many words drawn at random from the other replies); a loop (the reply's first 3-6 words
repeated to its length). Every text is scored with `reply_perplexities` under `--model` (default: the
embedded SmolLM2-135M-Instruct), conditioned on the reply's own prompting chat. The script prints
perplexity percentiles per kind of text, the share with a repeated word 4-gram, a suggested bound (the
geometric midpoint between the fluent p99 and the lowest p5 of the broken kinds other than the loop,
which the repeated-4-gram rule catches), the share of each kind below a few bounds, and how the default
gate (`FluencyThresholds()`) classifies each kind.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import numpy as np
import torch

from sev_bench.data import load_reference
from sev_bench.fluency import DEFAULT_THRESHOLDS, fluency_record, reply_perplexities, text_stats
from sev_bench.models import load_model
from sev_bench.prompts import PROMPTING_SYSTEM_TEMPLATE, chat

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
FLUENT = "reference replies"
# Loops are predictable, so their perplexity is low: the repeated-4-gram rule gates them, not the bound.
GATED_BY_REPETITION = ("loop (repeated fragment)",)


def pick_references(per_theme: int, seed: int) -> list[dict]:
    accepted = [row for row in load_reference("train") if row["judge"]["match"] == 1]
    by_theme: dict[str, list[dict]] = {}
    for row in accepted:
        by_theme.setdefault(row["theme"], []).append(row)
    rng = random.Random(seed)
    return [row for theme in sorted(by_theme) for row in rng.sample(by_theme[theme], per_theme)]


def broken_texts(references: list[dict], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed + 1)
    words = [row["gen_text"].split() for row in references]
    swapped, shuffled, salad, loop = [], [], [], []
    for index, own in enumerate(words):
        neighbours = list(own)
        for position in range(0, len(neighbours) - 1, 3):  # swap every third adjacent pair
            neighbours[position], neighbours[position + 1] = neighbours[position + 1], neighbours[position]
        swapped.append(" ".join(neighbours))
        mixed = list(own)
        rng.shuffle(mixed)
        shuffled.append(" ".join(mixed))
        others = [w for j, ws in enumerate(words) if j != index for w in ws]
        salad.append(" ".join(rng.choice(others) for _ in own))
        fragment = own[: rng.randint(3, 6)]
        loop.append(" ".join((fragment * (len(own) // len(fragment) + 1))[: len(own)]))
    return {
        "neighbours swapped": swapped,
        "shuffled words": shuffled,
        "word salad": salad,
        "loop (repeated fragment)": loop,
    }


def summarise(measured: dict[str, np.ndarray]) -> None:
    """Print the suggested bound and the share of each kind of text below a few bounds."""
    fluent_p99 = np.percentile(measured[FLUENT], 99)
    broken = [name for name in measured if name != FLUENT and name not in GATED_BY_REPETITION]
    broken_p5 = min(np.percentile(measured[name], 5) for name in broken)
    suggested = math.sqrt(fluent_p99 * broken_p5)
    print(f"fluent p99 {fluent_p99:.1f}, lowest p5 of the broken kinds {broken_p5:.1f}")
    print(f"suggested bound (their geometric midpoint): {suggested:.1f}")
    print(f"default bound (FluencyThresholds().max_perplexity): {DEFAULT_THRESHOLDS.max_perplexity:g}")
    bounds = sorted({50.0, 75.0, 100.0, 150.0, round(suggested, 1), DEFAULT_THRESHOLDS.max_perplexity})
    print("| share below the bound | " + " | ".join(f"{b:g}" for b in bounds) + " |")
    print("| --- " * (len(bounds) + 1) + "|")
    for name, values in measured.items():
        print(f"| {name} | " + " | ".join(f"{100 * np.mean(values < b):.1f}%" for b in bounds) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-theme", type=int, default=12, help="reference replies per theme (8 themes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", help="write every text with its perplexity to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    references = pick_references(args.per_theme, args.seed)
    conversations = [
        chat(PROMPTING_SYSTEM_TEMPLATE.format(emotion=row["emotion"]), row["scenario"], row["event"])
        for row in references
    ]
    kinds = {FLUENT: [row["gen_text"] for row in references]}
    kinds.update(broken_texts(references, args.seed))

    loaded = load_model(args.model, dtype="float32", device="cpu")
    print(f"model {args.model} ({loaded.revision}), {len(references)} reference replies, seed {args.seed}")
    header = "| text | n | " + " | ".join(f"p{p}" for p in PERCENTILES) + " | repeated 4-gram | default gate: fluent |"
    print(header)
    print("| --- " * (len(PERCENTILES) + 4) + "|")
    measured: dict[str, np.ndarray] = {}
    dump: dict[str, list] = {}
    for name, texts in kinds.items():
        perplexities = reply_perplexities(loaded, conversations, texts, batch_size=args.batch_size)
        stats = [text_stats(text) for text in texts]
        records = [fluency_record(s, p, DEFAULT_THRESHOLDS) for s, p in zip(stats, perplexities)]
        values = np.array([p for p in perplexities if p is not None])
        measured[name] = values
        dump[name] = [{"text": t, "perplexity": p} for t, p in zip(texts, perplexities)]
        cells = " | ".join(f"{np.percentile(values, p):.1f}" for p in PERCENTILES)
        repeated = sum(s["repeated_4gram"] for s in stats) / len(stats)
        fluent = sum(r["fluent"] for r in records) / len(records)
        print(f"| {name} | {len(texts)} | {cells} | {100 * repeated:.1f}% | {100 * fluent:.1f}% |")

    summarise(measured)
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as handle:
            json.dump(dump, handle, indent=1)
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
