"""The numbers a circuit report quotes and plots: the head-importance reading, how concentrated head
importance and neuron contributions are, and the validation means over emotions."""

from __future__ import annotations

from ..prompts import EMOTIONS

# What head importance projects, per head_space (metadata config; an artifact without one read the residual).
SPACE_READING = {
    "mlp_input": "<post_attention_layernorm(h_mid), v_attn>",
    "residual": "<h_mid, v_attn>",
}


def head_space(meta) -> str:
    return meta["config"].get("head_space", "residual")


def long_tail_figures(contrib_mean, head_importance) -> dict:
    """Per emotion: how concentrated head importance and neuron contributions are."""
    import torch

    result = {}
    for e, emotion in enumerate(EMOTIONS):
        heads = head_importance[e].flatten().sort(descending=True).values
        neurons = contrib_mean[e].flatten().sort(descending=True).values
        top_head = float(heads[0])
        rank20 = float(neurons[min(19, len(neurons) - 1)])
        result[emotion] = {
            "top_head": top_head,
            "median_head": float(heads.median()),
            "heads_over_0.1": float((heads > 0.1).float().mean()),
            "heads_over_10pct_of_top": float((heads > 0.1 * top_head).float().mean()) if top_head > 0 else 0.0,
            "top_neuron": float(neurons[0]),
            "neuron_rank20": rank20,
            "top_over_rank20": float(neurons[0]) / rank20 if rank20 > 0 else float("inf"),
            "median_abs_neuron": float(neurons.abs().median()),
            "top_over_median_abs": float(neurons[0] / neurons.abs().median().clamp_min(torch.finfo().tiny)),
        }
    return result


def mean_over_emotions(records, **match):
    chosen = [r for r in records if all(r[k] == v for k, v in match.items())]
    if not chosen:
        return None
    return {
        "local": sum(r["delta_local"] for r in chosen) / len(chosen),
        "final": sum(r["delta_final"] for r in chosen) / len(chosen),
    }


def validation_summary(records) -> list[dict]:
    """Per kind and k: mean over emotions of the score change, top vs random, ablation and enhancement at
    scale 1 (or the scale closest to 1)."""
    rows = []
    scales = sorted({r["scale"] for r in records if r["mode"] == "enhance"})
    scale = min(scales, key=lambda s: abs(s - 1.0)) if scales else None
    for kind in ("neurons", "heads"):
        for k in sorted({r["k"] for r in records if r["kind"] == kind}):
            row = {"kind": kind, "k": k, "scale": scale}
            for mode, selection in (("ablate", "top"), ("ablate", "random"), ("enhance", "top"), ("enhance", "random")):
                match = {"kind": kind, "k": k, "mode": mode, "selection": selection}
                if mode == "enhance":
                    match["scale"] = scale
                row[f"{mode}_{selection}"] = mean_over_emotions(records, **match)
            rows.append(row)
    return rows

