"""vLLM vs HF generation throughput on the same `none` and `prompting` prompts (needs vLLM: run it in the
environment that has it, e.g. `.venv-vllm`, see docs/scale-out.md, "vLLM backend").

    python benchmarks/backends.py            # 72 rows per method of the test split, 100 new tokens
    python benchmarks/backends.py --quick    # 24 rows per method, 64 new tokens (a few minutes, mostly startup)

Both backends decode greedily in the same dtype (default float32, sev-bench's CPU default) from the same chat
prompts (the distinct chats of the selected rows: `none` sends one chat for all six targets), with the same
batch size and the same CPU cores (`--threads`, default 1: torch threads for HF, the cores vLLM's worker
binds to; with 2 threads on a busy 2-core machine HF's OpenMP threads spin against other processes and the
ratio says more about the load than about the engines).
HF runs first and is freed before vLLM starts, so the two never share the cores. Each backend's timed pass
is the best of `--repeats` after a warm-up; model load and engine start-up are reported, not counted.
Throughput = generated tokens (up to and including each reply's EOS) / generation seconds. The script checks
how many replies are identical and ends with `vllm_vs_hf_throughput: X` (vLLM tokens/s over HF tokens/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from sev_bench.backends import make_generator
from sev_bench.backends.hf import GenerationConfig
from sev_bench.data import load_sev, select_rows
from sev_bench.methods import resolve_method
from sev_bench.prompts import EMOTIONS, VALENCES


def distinct_chats(method_name: str, rows: list[dict]) -> list[list[dict]]:
    method = resolve_method(method_name).method
    chats: dict[str, list[dict]] = {}
    for row in rows:
        messages = method.messages(row, row["target_emotion"])
        chats.setdefault(json.dumps(messages), messages)
    return list(chats.values())


def timed_pass(generator, conversations, repeats: int) -> tuple[list[str], float, int]:
    """Best-of-`repeats` generation: (replies, seconds, generated tokens) of the fastest pass."""
    generator.generate(conversations[:2])  # warm-up: allocations, first kernels
    best = None
    for _ in range(repeats):
        generator.new_token_count = 0
        start = time.perf_counter()
        replies = generator.generate(conversations)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[1]:
            best = (replies, seconds, generator.new_token_count)
    return best


def measure(backend: str, args, conversations: dict[str, list], config: GenerationConfig) -> dict:
    start = time.perf_counter()
    generator = make_generator(
        backend,
        args.model,
        dtype=args.dtype,
        device="cpu",
        batch_size=args.batch_size,
        config=config,
        seed=0,
        threads=args.threads,
    )
    load_s = time.perf_counter() - start
    out = {"load_s": load_s, "methods": {}}
    for method, chats in conversations.items():
        replies, seconds, tokens = timed_pass(generator, chats, args.repeats)
        out["methods"][method] = {"replies": replies, "seconds": seconds, "tokens": tokens}
    if hasattr(generator, "close"):
        generator.close()
    del generator
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=72, help="test-split rows per method (themes interleaved)")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU cores for each backend (default 1: vLLM's own default on 2 cores, and robust on a shared machine)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per backend; the best counts")
    parser.add_argument("--quick", action="store_true", help="24 rows per method, 64 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_new_tokens = 24, 64

    import torch

    torch.set_num_threads(args.threads)
    rows = select_rows(load_sev()["test"], list(EMOTIONS), list(VALENCES), args.rows)
    conversations = {method: distinct_chats(method, rows) for method in ("none", "prompting")}
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    print(
        f"model {args.model} ({args.dtype}), {args.rows} rows per method "
        f"({', '.join(f'{m}: {len(c)} distinct chats' for m, c in conversations.items())}), "
        f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}, {args.threads} CPU threads, "
        f"best of {args.repeats}",
        flush=True,
    )

    hf = measure("hf", args, conversations, config)
    vllm = measure("vllm", args, conversations, config)
    print(f"load: hf {hf['load_s']:.1f} s, vllm {vllm['load_s']:.1f} s (engine start-up included; not counted)")
    totals = {"hf": [0, 0.0], "vllm": [0, 0.0]}
    for method in conversations:
        a, b = hf["methods"][method], vllm["methods"][method]
        same = sum(x == y for x, y in zip(a["replies"], b["replies"]))
        for name, figures in (("hf", a), ("vllm", b)):
            totals[name][0] += figures["tokens"]
            totals[name][1] += figures["seconds"]
        print(
            f"{method:<10} hf {a['tokens'] / a['seconds']:7.1f} tok/s ({a['tokens']} tokens, {a['seconds']:.1f} s)   "
            f"vllm {b['tokens'] / b['seconds']:7.1f} tok/s ({b['tokens']} tokens, {b['seconds']:.1f} s)   "
            f"identical replies {same}/{len(a['replies'])}"
        )
    hf_rate = totals["hf"][0] / totals["hf"][1]
    vllm_rate = totals["vllm"][0] / totals["vllm"][1]
    print(f"overall    hf {hf_rate:7.1f} tok/s   vllm {vllm_rate:7.1f} tok/s")
    print(f"vllm_vs_hf_throughput: {vllm_rate / hf_rate:.2f}")


if __name__ == "__main__":  # vLLM spawns engine processes that re-import this module
    main()
