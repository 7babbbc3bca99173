"""Batched HF generation vs the authors' one-prompt-at-a-time loop, on the same prompts.

    python benchmarks/generation.py            # 32 prompting rows of the test split, 100 new tokens
    python benchmarks/generation.py --quick    # 16 rows, 24 new tokens (under a minute)

Both paths decode greedily in float32 (the protocol's precision) from the same chat prompts; the script
checks that they give the same replies and ends with `speedup_batched_vs_sequential: X`.
"""

from __future__ import annotations

import argparse
import time

import torch

from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt
from sev_bench.data import load_sev, select_rows
from sev_bench.methods import resolve_method
from sev_bench.models import load_model


def sequential_replies(loaded, conversations, max_new_tokens: int) -> list[str]:
    """The authors' loop: template, tokenize and `generate` each prompt on its own (no padding)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    replies = []
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
        replies.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="16 rows, 24 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_new_tokens = 16, 24

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
        f"torch threads {torch.get_num_threads()}"
    )

    sequential_replies(loaded, conversations[:1], 4)  # warm-up (allocations, kernels)
    start = time.perf_counter()
    sequential = sequential_replies(loaded, conversations, args.max_new_tokens)
    sequential_s = time.perf_counter() - start

    generator = HFGenerator(loaded, args.batch_size, GenerationConfig(max_new_tokens=args.max_new_tokens))
    start = time.perf_counter()
    batched = generator.generate(conversations)
    batched_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(sequential, batched))
    tokens = generator.new_token_count
    print(f"sequential (batch 1 loop): {sequential_s:.1f} s, {tokens / sequential_s:.1f} tok/s")
    print(f"batched (batch {args.batch_size}):        {batched_s:.1f} s, {tokens / batched_s:.1f} tok/s")
    print(f"identical replies: {same}/{len(rows)}; generated tokens: {tokens}")
    print(f"speedup_batched_vs_sequential: {sequential_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
