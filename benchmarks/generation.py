"""Batched HF generation vs the authors' one-prompt-at-a-time loop, on the same prompts.

    python benchmarks/generation.py            # 32 prompting rows of the test split, 100 new tokens
    python benchmarks/generation.py --quick    # 16 rows, 24 new tokens (under a minute)
    python benchmarks/generation.py --passes 2 --static --write   # what benchmarks/results/generation.json holds

All paths decode greedily (float32 by default, the protocol's precision) from the same chat prompts:
- sequential: the authors' loop, `model.generate` on each prompt alone (no padding);
- batched: sev-bench's HF backend (`HFGenerator`, batches of `--batch-size`): finished rows leave the batch
  with their KV-cache rows and waiting prompts take the free slots (`sev_bench/backends/continuous.py`);
- static (`--static`): the backend before that change, `model.generate` per batch, every row stepping until
  the batch's longest reply ends.
Passes alternate (sequential, batched[, static], then the next pass), so a change in the machine's load
hits every path alike; each path's time is its median over the passes (each pass's own ratio is printed
too). The script checks that the replies are identical and ends with `speedup_batched_vs_sequential: X`.

Wall-clock times depend on the load of the machine (the 1-minute load average is recorded before and after).
The forward-call counts do not: each decoded row-step of the batched path keeps its token, and
`kept_row_step_share` says which share of the row-steps of each path produced a kept token.
`--write [PATH]` saves everything to PATH (default benchmarks/results/generation.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt
from sev_bench.data import load_sev, select_rows
from sev_bench.methods import resolve_method
from sev_bench.models import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"


def sequential_replies(loaded, conversations, max_new_tokens: int) -> tuple[list[str], list[int]]:
    """The authors' loop: template, tokenize and `generate` each prompt on its own (no padding). Returns
    the replies and each one's new-token count (up to and including its EOS)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    replies, counts = [], []
    for messages in conversations:
        inputs = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[0, inputs["input_ids"].shape[1] :]
        replies.append(tokenizer.decode(new, skip_special_tokens=True))
        counts.append(len(new))
    return replies, counts


def static_generator(loaded, batch_size: int, max_new_tokens: int) -> HFGenerator:
    """The backend as it was: every batch through `model.generate` (rows step until the longest ends)."""
    generator = HFGenerator(loaded, batch_size, GenerationConfig(max_new_tokens=max_new_tokens))
    generator._generate_batch = generator._generate_with_transformers
    return generator


def forward_calls(counts: list[int], order: list[int], batch_size: int, decode_counts) -> dict:
    """Forward calls and row-steps of each path, from the reply lengths (independent of the load)."""
    kept = sum(counts)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    static_calls = sum(max(counts[i] for i in batch) for batch in batches)
    static_row_steps = sum(len(batch) * max(counts[i] for i in batch) for batch in batches)
    # The batched path: each prefill chooses one token per row, each decode row-step one more.
    batched_row_steps = len(counts) + decode_counts["decode_rows"]
    return {
        "kept_tokens": kept,
        "sequential": {"forward_calls": kept, "row_steps": kept, "kept_row_step_share": 1.0},
        "static": {
            "forward_calls": static_calls,
            "row_steps": static_row_steps,
            "kept_row_step_share": round(kept / static_row_steps, 3),
        },
        "batched": {
            "forward_calls": decode_counts["prefills"] + decode_counts["decode_steps"],
            "prefills": decode_counts["prefills"],
            "row_steps": batched_row_steps,
            "kept_row_step_share": round(kept / batched_row_steps, 3),
        },
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--passes", type=int, default=1, help="alternating passes over every path")
    parser.add_argument("--static", action="store_true", help="also time the backend before continuous batching")
    parser.add_argument("--quick", action="store_true", help="16 rows, 24 new tokens")
    parser.add_argument(
        "--write", nargs="?", const=str(RESULTS), metavar="PATH", help=f"save the results (default: {RESULTS.name})"
    )
    parser.add_argument("--note", default="", help="a line saved with the results (e.g. the machine's load)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_new_tokens = 16, 24
    return args


def timed_passes(loaded, conversations, args):
    """Alternating passes over the paths: their times, last replies, new-token counts and decode counts."""
    times: dict[str, list[float]] = {"sequential": [], "batched": [], "static": []}
    replies: dict[str, list[str]] = {}
    for number in range(1, args.passes + 1):
        start = time.perf_counter()
        replies["sequential"], counts = sequential_replies(loaded, conversations, args.max_new_tokens)
        times["sequential"].append(time.perf_counter() - start)
        generator = HFGenerator(loaded, args.batch_size, GenerationConfig(max_new_tokens=args.max_new_tokens))
        start = time.perf_counter()
        replies["batched"] = generator.generate(conversations)
        times["batched"].append(time.perf_counter() - start)
        if args.static:
            start = time.perf_counter()
            replies["static"] = static_generator(loaded, args.batch_size, args.max_new_tokens).generate(conversations)
            times["static"].append(time.perf_counter() - start)
        line = ", ".join(f"{path} {seconds[-1]:.1f} s" for path, seconds in times.items() if seconds)
        print(f"pass {number}: {line}", flush=True)
    assert generator.new_token_count == sum(counts), (generator.new_token_count, sum(counts))
    return {path: seconds for path, seconds in times.items() if seconds}, replies, counts, generator.decode_counts


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    method = resolve_method("prompting").method
    rows = select_rows(
        load_sev()["test"],
        ["anger", "sadness", "happiness", "fear", "surprise", "disgust"],
        ["positive", "neutral", "negative"],
        args.rows,
    )
    conversations = [method.messages(row, row["target_emotion"]) for row in rows]
    print(
        f"model {args.model} ({args.dtype}), {len(rows)} prompting rows, max_new_tokens {args.max_new_tokens}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, {args.passes} pass(es)",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    # Warm-up of both loops (allocations, kernels for the batch shapes), so no timed pass pays for it.
    sequential_replies(loaded, conversations[:1], 4)
    HFGenerator(loaded, args.batch_size, GenerationConfig(max_new_tokens=4)).generate(conversations[: args.batch_size])
    times, replies, counts, decode_counts = timed_passes(loaded, conversations, args)
    load_after = os.getloadavg()[0]

    tokens = sum(counts)
    median = {path: statistics.median(seconds) for path, seconds in times.items()}
    identical = {path: sum(a == b for a, b in zip(replies["sequential"], got)) for path, got in replies.items()}
    prompts = [render_prompt(loaded.tokenizer, messages) for messages in conversations]
    lengths = [len(ids) for ids in loaded.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # the backend's batch order
    calls = forward_calls(counts, order, args.batch_size, decode_counts)
    for path, seconds in median.items():
        print(f"{path:<10} {seconds:7.1f} s  {tokens / seconds:6.1f} tok/s  identical {identical[path]}/{len(rows)}")
    for path in ("sequential", "static", "batched"):
        row = calls[path]
        print(
            f"{path:<10} forward calls {row['forward_calls']:5d}, row-steps {row['row_steps']:5d}, "
            f"kept share {row['kept_row_step_share']:.0%}"
        )
    print(f"load average (1 min) before {load_before:.1f}, after {load_after:.1f}")
    # Each pass's own ratio too: a load spike during one pass shows up as an outlier there.
    per_pass = [round(s / b, 2) for s, b in zip(times["sequential"], times["batched"])]
    print(f"batched vs sequential, per pass: {', '.join(f'{ratio:.2f}' for ratio in per_pass)}")
    speedups = {f"speedup_{path}_vs_sequential": round(median["sequential"] / median[path], 2) for path in median}
    del speedups["speedup_sequential_vs_sequential"]
    for name, value in sorted(speedups.items(), reverse=True):
        print(f"{name}: {value:.2f}")  # speedup_batched_vs_sequential last
    if args.write:
        record = {
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "settings": {k: getattr(args, k) for k in ("model", "rows", "max_new_tokens", "batch_size", "dtype")},
            "torch_threads": torch.get_num_threads(),
            "passes": args.passes,
            "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
            "note": args.note,
            "seconds": {path: [round(s, 2) for s in seconds] for path, seconds in times.items()},
            "median_seconds": {path: round(s, 2) for path, s in median.items()},
            "identical_replies": identical,
            "generated_tokens": tokens,
            "forward_calls": calls,
            "speedup_batched_vs_sequential_per_pass": per_pass,
            **speedups,
        }
        out = Path(args.write)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
