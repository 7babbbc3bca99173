"""Head importance (docs/protocol.md, step 4b): the batched stage vs the one-head-one-prompt loop, same prompts.

    python benchmarks/discovery.py            # 6 train prompts, smollm2-135m
    python benchmarks/discovery.py --quick    # 1 prompt (a few minutes on 2 busy CPU cores)

The loop is what the authors' script does: for every prompt and every (layer, head), one full forward of
the prompt with that head's slice of the o_proj input zeroed, reading <post_attention_layernorm(h_mid),
v_attn> (the MLP's input; `--head-space residual`: <h_mid, v_attn>) at that layer (plus one clean forward
per prompt and layer). The batched stage (`sev_bench.discovery.stages.heads.
head_importance`) prefills each prompt once without its last token, then runs that token as one decode
step carrying a clean copy and one copy per head of a layer (per-row specs), and stops the forward after
the layer it measures. Both use the same random unit directions (the cost does not depend on them) and
must agree (the largest difference is printed). Ends with `head_importance_speedup: X` (loop seconds over
batched seconds).
"""

from __future__ import annotations

import argparse
import time

import torch

from sev_bench.backends.hf import render_prompt
from sev_bench.data import load_sev, select_rows
from sev_bench.discovery.stages.heads import head_importance, head_importance_naive
from sev_bench.models import load_model
from sev_bench.prompts import EMOTIONS, PROMPTING_SYSTEM_TEMPLATE, VALENCES, chat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=6, help="train prompts (emotion-instructed)")
    parser.add_argument("--rows-per-pass", type=int, default=128, help="copies per batched forward (the CLI's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="1 prompt")
    parser.add_argument("--head-space", default="mlp_input", choices=("mlp_input", "residual"))
    args = parser.parse_args()
    if args.quick:
        args.rows = 1
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    rows = select_rows(load_sev()["train"], list(EMOTIONS), list(VALENCES), args.rows)
    texts = [
        render_prompt(
            loaded.tokenizer,
            chat(PROMPTING_SYSTEM_TEMPLATE.format(emotion=row["target_emotion"]), row["scenario"], row["event"]),
        )
        for row in rows
    ]
    emotions = torch.tensor([EMOTIONS.index(row["target_emotion"]) for row in rows])
    generator = torch.Generator().manual_seed(0)
    hidden = loaded.model.config.hidden_size
    directions = torch.nn.functional.normalize(
        torch.randn(len(EMOTIONS), loaded.num_layers, hidden, generator=generator), dim=-1
    )
    space = args.head_space
    head_importance(loaded, texts[:1], emotions[:1], directions, space=space, batch_size=1, max_rows=16)  # warm-up

    start = time.perf_counter()
    batched, _ = head_importance(
        loaded, texts, emotions, directions, space=space, batch_size=args.batch_size, max_rows=args.rows_per_pass
    )
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    naive, _ = head_importance_naive(loaded, texts, emotions, directions, space=space)
    naive_s = time.perf_counter() - start

    heads = loaded.num_layers * loaded.num_heads
    device = next(loaded.model.parameters()).device
    print(
        f"model {args.model} ({loaded.num_layers} layers x {loaded.num_heads} heads = {heads}, {args.dtype}, "
        f"{device}), {len(texts)} prompts, head space {space}, torch threads {torch.get_num_threads()}"
    )
    print(f"loop     {naive_s:8.2f} s  ({len(texts) * (heads + loaded.num_layers)} forwards of one prompt)")
    print(f"batched  {batched_s:8.2f} s  ({args.rows_per_pass} copies per pass)")
    print(f"largest difference between the two: {float((batched - naive).abs().max()):.2e}")
    print(f"head_importance_speedup: {naive_s / batched_s:.1f}")


if __name__ == "__main__":
    main()
