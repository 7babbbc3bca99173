"""`report.md` + PNGs for an emotion-directions artifact: how the directions relate across layers and
positions, whether they are the same in every valence context, and how the states cluster."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from ..atomic import write_text_atomic
from ..prompts import EMOTIONS, VALENCES
from .plotting import PNG_METADATA, pyplot


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def interleaved(directions, emotion_index: int):
    """[2 * layers, hidden]: attn_0, mlp_0, attn_1, mlp_1, ... for one emotion."""
    import torch

    attn, mlp = directions.tensors["attn"][emotion_index], directions.tensors["mlp"][emotion_index]
    return torch.stack([attn, mlp], dim=1).reshape(-1, attn.shape[-1])


def similarity_figures(directions) -> dict:
    """Numbers the report quotes, per layer and averaged over emotions: attn_l vs mlp_l, mlp_l vs
    attn_(l+1), and mlp_l vs mlp_(l+1) (how stable a direction is from one layer to the next).
    (Cosines *between* emotions are not informative: six centred directions of similar norm have a mean
    pairwise cosine of about -1/5 by construction.)"""
    attn, mlp = directions.tensors["attn"], directions.tensors["mlp"]  # [6, L, d]
    return {
        "attn_to_mlp": _cos(attn, mlp).mean(0).tolist(),
        "mlp_to_next_attn": _cos(mlp[:, :-1], attn[:, 1:]).mean(0).tolist(),
        "mlp_to_next_mlp": _cos(mlp[:, :-1], mlp[:, 1:]).mean(0).tolist(),
    }


def consistency(directions, position: str = "mlp") -> dict[str, list[float]] | None:
    """Per valence pair, per layer: cosine between the directions computed from each valence's groups
    alone, averaged over emotions. None when a valence has no group."""
    names = [f"{position}.{v}" for v in VALENCES]
    if not all(name in directions.tensors for name in names):
        return None
    result = {}
    for a, b in combinations(VALENCES, 2):
        cos = _cos(directions.tensors[f"{position}.{a}"], directions.tensors[f"{position}.{b}"])  # [6, L]
        result[f"{a}-{b}"] = cos.mean(0).tolist()
    return result


def write_directions_report(directions, states, out: Path) -> None:
    """Write report.md and its PNGs into `out`. `states` (the last-token states, for the PCA figure) may
    be None to rebuild the rest of a report from a saved artifact; an existing PCA figure is kept."""
    plt = pyplot()
    meta = directions.metadata
    n_layers = directions.num_layers

    # 1. Cosine across layers and positions, per emotion.
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    for index, (emotion, ax) in enumerate(zip(EMOTIONS, axes.flat)):
        vectors = interleaved(directions, index)
        matrix = _cos(vectors[:, None, :], vectors[None, :, :]).numpy()
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ticks = list(range(0, 2 * n_layers, max(2, 2 * (n_layers // 6))))
        ax.set_xticks(ticks, [f"{'A' if t % 2 == 0 else 'M'}{t // 2}" for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [f"{'A' if t % 2 == 0 else 'M'}{t // 2}" for t in ticks], fontsize=7)
        ax.set_title(emotion)
    fig.colorbar(image, ax=axes, shrink=0.6, label="cosine")
    fig.suptitle("Cosine between directions: A<l> = after attention of layer l, M<l> = after layer l")
    fig.savefig(out / "direction_similarity.png", dpi=90, metadata=PNG_METADATA)
    plt.close(fig)

    # 2. Cross-context consistency.
    figures = similarity_figures(directions)
    valence_consistency = consistency(directions)
    if valence_consistency is not None:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for pair, values in valence_consistency.items():
            ax.plot(range(n_layers), values, marker="o", markersize=3, label=pair)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine (mean over emotions)")
        ax.set_ylim(-1, 1)
        ax.set_title("Same emotion, different valence contexts (MLP position)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "valence_consistency.png", dpi=90, metadata=PNG_METADATA)
        plt.close(fig)

    if states is not None:
        _pca_figure(plt, states, n_layers, out)
    write_text_atomic(out / "report.md", _markdown(meta, figures, valence_consistency, n_layers))


def _pca_figure(plt, states, n_layers: int, out: Path) -> None:
    """PCA of last-token states at four depths, coloured by emotion."""
    import torch

    picks = sorted({0, n_layers // 3, (2 * n_layers) // 3, n_layers - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.2))
    emotion_of_row = [EMOTIONS[i % len(EMOTIONS)] for i in range(states["mlp"].shape[0])]
    # Rows come group-major (six emotions per (skeleton, valence) group); removing each group's mean
    # takes out the scenario, which otherwise dominates the first components.
    grouped = states["mlp"].reshape(-1, len(EMOTIONS), *states["mlp"].shape[1:])
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(states["mlp"].shape)
    for ax, layer in zip(axes, picks):
        x = centred[:, layer]
        x = x - x.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        points = (x @ v[:2].T).numpy()
        for emotion in EMOTIONS:
            mask = [e == emotion for e in emotion_of_row]
            ax.scatter(points[mask, 0], points[mask, 1], s=6, label=emotion, alpha=0.7)
        ax.set_title(f"layer {layer}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, markerscale=2)
    fig.suptitle("Last prompt token states (after the layer, centred per group): first two principal components")
    fig.tight_layout()
    fig.savefig(out / "pca_states.png", dpi=90, metadata=PNG_METADATA)
    plt.close(fig)


def _markdown(meta: dict, figures: dict, valence_consistency, n_layers: int) -> str:
    config = meta["config"]
    model = meta["model"]
    lines = [
        f"# Emotion directions: {model['id']}",
        "",
        f"- model: `{model['id']}` ({model['architecture']}, {model['num_layers']} layers, hidden "
        f"{model['hidden_size']}, revision `{model['revision']}`)",
        "- dataset sha256: " + ", ".join(f"{split} `{sha[:12]}…`" for split, sha in meta["dataset_sha256"].items())
        + f"; train rows used: {meta['train_rows']}"
        + (f" (limit {config['limit']})" if config["limit"] else " (the whole train split)"),
        f"- acceptance: `{config['accept']}`"
        + (
            f" (scorer `{meta['scorer']['id']}`, sha256 `{meta['scorer']['sha256'][:12]}…`)"
            if config["accept"] == "scorer"
            else " (every row counts; no replies generated)"
        ),
        f"- accepted rows: {meta['accepted_rows']} of {meta['train_rows']} ("
        + ", ".join(f"{e} {n}" for e, n in meta["accepted_by_emotion"].items())
        + ")",
        f"- complete (skeleton, valence) groups: **{meta['groups']}** per emotion ("
        + ", ".join(f"{v} {n}" for v, n in meta["groups_by_valence"].items())
        + f"); minimum {meta['min_groups']}",
        f"- wall time: elicitation {meta['timings']['elicitation_s']} s, activations "
        f"{meta['timings']['activations_s']} s",
        "",
        "Positions: `attn` = the residual after layer l's attention sublayer (h_in + attn_out); `mlp` = layer "
        "l's output (before the final norm, also for the last layer).",
        "",
        "## Similarity across layers and positions",
        "",
        "![cosine between directions](direction_similarity.png)",
        "",
        "Cosine of the same emotion's directions, mean over the six emotions:",
        "",
        "| layer | attn_l vs mlp_l | mlp_l vs attn_(l+1) | mlp_l vs mlp_(l+1) |",
        "| --- | --- | --- | --- |",
    ]
    for layer in range(n_layers):
        if layer < n_layers - 1:
            nxt = f"{figures['mlp_to_next_attn'][layer]:.3f} | {figures['mlp_to_next_mlp'][layer]:.3f}"
        else:
            nxt = "– | –"
        lines.append(f"| {layer} | {figures['attn_to_mlp'][layer]:.3f} | {nxt} |")
    mean_am = sum(figures["attn_to_mlp"]) / n_layers
    mean_ma = sum(figures["mlp_to_next_attn"]) / max(1, n_layers - 1)
    lines += [
        "",
        f"Mean attn_l -> mlp_l cosine {mean_am:.3f}; mean mlp_l -> attn_(l+1) {mean_ma:.3f} "
        "(the paper's Llama-3.2-3B: about 0.77 and 0.81).",
        "",
        "## Cross-context consistency",
        "",
    ]
    if valence_consistency is None:
        lines.append("Not computed: some valence has no complete group.")
    else:
        lines += [
            "Directions computed from each valence's groups alone; cosine between them per layer, mean over "
            "emotions (MLP position). High values mean the direction does not depend on the event's valence.",
            "",
            "![valence consistency](valence_consistency.png)",
            "",
            "| layer | " + " | ".join(valence_consistency) + " |",
            "| --- | " + " | ".join("---" for _ in valence_consistency) + " |",
        ]
        for layer in range(n_layers):
            lines.append(f"| {layer} | " + " | ".join(f"{v[layer]:.3f}" for v in valence_consistency.values()) + " |")
    lines += ["", "## States", "", "![PCA of last-token states](pca_states.png)", ""]
    return "\n".join(lines)
