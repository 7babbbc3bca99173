"""What the intervention hooks cost: steered vs unsteered batched generation, same prompts, same batch.

    python benchmarks/hook_overhead.py            # 32 test rows, 64 new tokens, batch 16
    python benchmarks/hook_overhead.py --quick    # 16 rows, 24 new tokens (under a minute)

Both passes decode exactly `--max-new-tokens` tokens per row (min_new_tokens = max_new_tokens), so the
steering's effect on reply length cannot bias the comparison: the difference is the hooks' cost alone.
The steered pass uses the `steering` method's interventions (alpha * RMS(h) * v on the decoder-layer
outputs of the protocol's layer range, at the last prompt token and every generated token) with random
unit directions of the right shape (cost does not depend on the direction). Passes alternate and the best
of `--repeats` is kept. Prints `steered_throughput_ratio: X` (steered tokens/s over plain tokens/s).

The circuit case runs the `circuit` method's interventions (docs/protocol.md, step 7) for a random circuit of the
default budget (the paper's shares of heads and MLP neurons, allocated as by `sev-bench discover circuit`
with equal importances: on SmolLM2-135M 4 neurons and 2-3 heads in every layer, 2L hooks; the cost does not
depend on how many components are selected, each hook adds one dense masked value) with random difference
vectors, and ends with `circuit_throughput_ratio: X` (circuit tokens/s over plain).
"""

from __future__ import annotations

import argparse
import time

import torch

from sev_bench.backends.hf import GenerationConfig, HFGenerator
from sev_bench.data import load_sev, select_rows
from sev_bench.interventions import InterventionSpec
from sev_bench.methods import resolve_method
from sev_bench.methods.steering import resolve_layers
from sev_bench.models import load_model
from sev_bench.prompts import EMOTIONS, VALENCES


def steering_specs(loaded, alpha: float = 8.0) -> list[InterventionSpec]:
    generator = torch.Generator().manual_seed(0)
    hidden = loaded.model.config.hidden_size
    specs = []
    for layer in resolve_layers("auto", loaded.num_layers):
        direction = torch.randn(hidden, generator=generator)
        specs.append(
            InterventionSpec(
                "resid_post",
                layer,
                "add",
                alpha * direction / direction.norm(),
                positions=frozenset({"last_prompt", "generated"}),
                norm="rms",
            )
        )
    return specs


def circuit_specs(loaded, emotion: str = "anger", scale: float = 1.0) -> list[InterventionSpec]:
    from sev_bench.discovery.circuit import Circuit, CircuitConfig, integrate

    generator = torch.Generator().manual_seed(0)
    layers, heads, d_ff = loaded.num_layers, loaded.num_heads, loaded.model.config.intermediate_size
    width = heads * loaded.head_dim
    neurons, selected_heads, _ = integrate(
        torch.ones(6, layers, 2),  # equal sublayer importance: the budget spreads evenly
        torch.rand(6, layers, d_ff, generator=generator),
        torch.rand(6, layers, heads, generator=generator),
        CircuitConfig(),
        heads,
        log=lambda message: None,
    )
    tensors = {
        "neurons": neurons.to(torch.uint8),
        "heads": selected_heads.to(torch.uint8),
        "dmu_mlp": torch.randn(6, layers, d_ff, generator=generator),
        "dmu_attn": torch.randn(6, layers, width, generator=generator),
    }
    circuit = Circuit(None, tensors, {"architecture": {"head_dim": loaded.head_dim}})
    return resolve_method("circuit", [f"scale={scale}"]).method.interventions(circuit, emotion)


def timed(generator, conversations, specs) -> tuple[float, int]:
    generator.new_token_count = 0
    start = time.perf_counter()
    generator.generate(conversations, interventions=specs)
    return time.perf_counter() - start, generator.new_token_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="16 rows, 24 new tokens")
    parser.add_argument("--threads", type=int, help="torch CPU threads (one is steadier on a busy machine)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_new_tokens = 16, 24
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    method = resolve_method("steering").method
    rows = select_rows(load_sev()["test"], list(EMOTIONS), list(VALENCES), args.rows)
    conversations = [method.messages(row, row["target_emotion"]) for row in rows]
    config = GenerationConfig(args.max_new_tokens, {"min_new_tokens": args.max_new_tokens})
    generator = HFGenerator(loaded, args.batch_size, config)
    specs = steering_specs(loaded)
    circuit = circuit_specs(loaded)
    timed(generator, conversations[: args.batch_size], [])  # warm-up

    best = {"plain": None, "steered": None, "circuit": None}
    for _ in range(args.repeats):
        for name, chosen in (("plain", []), ("steered", specs), ("circuit", circuit)):
            seconds, tokens = timed(generator, conversations, chosen)
            rate = tokens / seconds
            best[name] = max(best[name] or 0.0, rate)
            print(f"{name:8} {tokens} tokens in {seconds:.2f} s = {rate:.1f} tokens/s")
    device = next(loaded.model.parameters()).device
    print(
        f"model {args.model} ({loaded.num_layers} layers, {args.dtype}, {device}), {len(conversations)} rows, "
        f"batch {args.batch_size}, {args.max_new_tokens} new tokens, {len(specs)} steered layers, "
        f"circuit hooks {len(circuit)}, torch threads {torch.get_num_threads()}"
    )
    print(f"steered_throughput_ratio: {best['steered'] / best['plain']:.3f}")
    print(f"circuit_throughput_ratio: {best['circuit'] / best['plain']:.3f}")


if __name__ == "__main__":
    main()
