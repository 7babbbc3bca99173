"""Stage 5, integration (protocol step 6b): the budget per kind, then a minimum per layer, the rest in
proportion to max(I, 0) (floor + largest remainder), capped at `cap_fraction * K_kind` (and the heads a
layer has), backfilled; then the top neurons by C_mean and heads by importance in each layer. Cheap and
never cached: redone whenever only its settings change. The budget rules are described in
`sev_bench.discovery.circuit`."""

from __future__ import annotations

import math
from fractions import Fraction

from ...errors import UserError
from ...prompts import EMOTIONS
from ..circuit_config import CircuitConfig
from ..circuit_math import top_mask

# The paper's setup (protocol step 6b): Llama-3.2-3B-Instruct, 28 layers x 24 heads, MLP width 8192;
# K_total = 560 = 10 x 56 sublayers, 392 neurons (0.7) + 168 heads per emotion.
PAPER_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
PAPER_LAYERS, PAPER_HEADS_PER_LAYER, PAPER_D_FF = 28, 24, 8192
PAPER_K_NEURONS, PAPER_K_HEADS = 392, 168
PAPER_TOTAL_HEADS = PAPER_LAYERS * PAPER_HEADS_PER_LAYER  # 672
PAPER_TOTAL_NEURONS = PAPER_LAYERS * PAPER_D_FF  # 229,376


def _share(selected: int, total: int) -> dict:
    return {"selected": int(selected), "total": int(total), "percent": round(100 * selected / total, 4)}


# The shares the paper's circuit selects (per emotion), for the reports.
PAPER_SHARES = {
    "model": PAPER_MODEL,
    "heads": _share(PAPER_K_HEADS, PAPER_TOTAL_HEADS),
    "neurons": _share(PAPER_K_NEURONS, PAPER_TOTAL_NEURONS),
}


def selection_shares(neuron_masks, head_masks) -> dict:
    """Per kind: {selected, total, percent}: the components one emotion's circuit selects out of all the
    model has (masks [6, L, n]); every emotion selects as many (the budget is per emotion), else
    `per_emotion` lists the counts and `selected` is the first emotion's."""
    result = {}
    for kind, masks in (("heads", head_masks), ("neurons", neuron_masks)):
        counts = [int(mask.bool().sum()) for mask in masks]
        result[kind] = _share(counts[0], masks[0].numel())
        if len(set(counts)) > 1:
            result[kind]["per_emotion"] = dict(zip(EMOTIONS, counts))
    return result


def split_budget(num_layers: int, budget_per_sublayer: float, neuron_share: float) -> tuple[int, int]:
    """(K_mlp, K_attn) of `budget_rule="per_sublayer"`: K_total = budget x 2L sublayers, split
    neuron_share / rest (560 -> 392 + 168)."""
    total = int(round(budget_per_sublayer * 2 * num_layers))
    neurons = int(round(neuron_share * total))
    return neurons, total - neurons


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def paper_share_budget(
    num_layers: int, num_heads: int, d_ff: int, min_neurons: int = 0, min_heads: int = 0
) -> tuple[int, int]:
    """(K_mlp, K_attn) of `budget_rule="paper_shares"`: the shares the paper's budget selects on
    Llama-3.2-3B-Instruct (392 of its 28 x 8192 = 229,376 MLP neurons, 168 of its 28 x 24 = 672 heads)
    applied to this model's totals, rounded half up (exact fractions), each raised to at least what the
    per-layer minimums take (`min(minimum, components per layer) x layers`). Gives 392 + 168 on the
    paper's model, as `split_budget(28, 10, 0.7)` does."""
    heads = _round_half_up(Fraction(PAPER_K_HEADS, PAPER_TOTAL_HEADS) * num_layers * num_heads)
    neurons = _round_half_up(Fraction(PAPER_K_NEURONS, PAPER_TOTAL_NEURONS) * num_layers * d_ff)
    return (
        max(neurons, min(min_neurons, d_ff) * num_layers),
        max(heads, min(min_heads, num_heads) * num_layers),
    )


def circuit_budget(config: CircuitConfig, num_layers: int, num_heads: int, d_ff: int) -> tuple[int, int]:
    """(K_mlp, K_attn) per emotion under `config.budget_rule`."""
    if config.budget_rule == "per_sublayer":
        return split_budget(num_layers, config.budget_per_sublayer, config.neuron_share)
    return paper_share_budget(num_layers, num_heads, d_ff, config.min_neurons, config.min_heads)


def _largest_remainder(amount: int, weights: list[float]) -> list[int]:
    """`amount` split over `weights` (sum > 0): floors, then one more to the largest remainders (ties: the
    larger weight, then the lower index)."""
    total = sum(weights)
    exact = [amount * w / total for w in weights]
    shares = [int(x) for x in exact]  # floor (non-negative)
    left = amount - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), -weights[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def allocate(importance, total: int, minimum: int, cap_fraction: float, available) -> list[int]:
    """Components per layer for one kind (step 6b): at least `min(minimum, cap)` each; the rest in
    proportion to max(I, 0) by floor + largest remainder; each layer capped at
    `min(floor(cap_fraction * total), available)`; what the caps cut is backfilled into the layers with
    room, again in proportion to max(I, 0) (uniformly where all of those are 0). The counts sum to
    `total` exactly, or to the most the caps allow when that is less (a model with few heads; see
    `capacity`). Quotas above the budget are a UserError."""
    importance = [float(x) for x in importance]
    n = len(importance)
    cap = layer_caps(n, total, cap_fraction, available)
    total = min(total, sum(cap))
    counts = [min(minimum, c) for c in cap]
    if sum(counts) > total:
        raise UserError(f"the minimum quotas ({sum(counts)}) exceed the budget ({total}); lower the minimum")
    weights = [max(0.0, x) for x in importance]
    remaining = total - sum(counts)
    while remaining > 0:
        room = [i for i in range(n) if counts[i] < cap[i]]
        open_weights = [weights[i] for i in room]
        if sum(open_weights) <= 0:
            open_weights = [1.0] * len(room)
        for i, share in zip(room, _largest_remainder(remaining, open_weights)):
            counts[i] += min(share, cap[i] - counts[i])
        remaining = total - sum(counts)
    return counts


def layer_caps(n_layers: int, total: int, cap_fraction: float, available) -> list[int]:
    """Per layer: min(floor(cap_fraction * total), the components the layer has)."""
    if isinstance(available, int):
        available = [available] * n_layers
    return [min(int(cap_fraction * total + 1e-9), int(a)) for a in available]


def integrate(importance, contrib_mean, head_scores, config: CircuitConfig, num_heads: int, log=print):
    """Step 6b for the six emotions: (neuron masks [6, L, d_ff], head masks [6, L, H], counts per emotion)."""
    import torch

    n_layers, d_ff = contrib_mean.shape[1], contrib_mean.shape[2]
    k_mlp, k_attn = circuit_budget(config, n_layers, num_heads, d_ff)
    neuron_masks, head_masks, counts = [], [], {}
    caps = {
        "neurons": sum(layer_caps(n_layers, k_mlp, config.cap_fraction, d_ff)),
        "heads": sum(layer_caps(n_layers, k_attn, config.cap_fraction, num_heads)),
    }
    for kind, budget in (("neurons", k_mlp), ("heads", k_attn)):
        if budget > caps[kind]:
            log(f"the {kind} budget {budget} exceeds what the caps allow on this model; using {caps[kind]}")
    for e, emotion in enumerate(EMOTIONS):
        neurons = allocate(importance[e, :, 1].tolist(), k_mlp, config.min_neurons, config.cap_fraction, d_ff)
        heads = allocate(importance[e, :, 0].tolist(), k_attn, config.min_heads, config.cap_fraction, num_heads)
        neuron_masks.append(top_mask(contrib_mean[e], neurons))
        head_masks.append(top_mask(head_scores[e], heads))
        counts[emotion] = {"neurons": neurons, "heads": heads}
    return torch.stack(neuron_masks), torch.stack(head_masks), counts

