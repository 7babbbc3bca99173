"""The PNG figures of a circuit report: head importance, the long tails, sublayer importance, the
ablation / enhancement curves, circuit size per layer and the emotions' overlap."""

from __future__ import annotations

from pathlib import Path

from ..prompts import EMOTIONS
from .circuit_summary import SPACE_READING, head_space, mean_over_emotions
from .plotting import PNG_METADATA, pyplot

COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:brown")


def write_circuit_figures(meta, contrib_mean, head_importance, importance, records, out: Path) -> None:
    """Every figure of the report into `out` (`importance`: the normalised sublayer importance)."""
    plt = pyplot()
    n_layers = meta["architecture"]["num_layers"]
    _head_importance_figure(plt, meta, head_importance, out)
    _long_tail_figure(plt, meta, contrib_mean, head_importance, out)
    _sublayer_figure(plt, importance, n_layers, out)
    for mode, name in (("ablate", "validation_ablation.png"), ("enhance", "validation_enhancement.png")):
        _validation_figure(plt, records, mode, out / name)
    _circuit_size_figure(plt, meta, n_layers, contrib_mean.shape[2], head_importance.shape[2], out)
    _jaccard_figure(plt, meta, out)


def _save(plt, fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=PNG_METADATA)
    plt.close(fig)


def _head_importance_figure(plt, meta, head_importance, out: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 9), sharey=True)
    limit = float(head_importance.abs().max()) or 1.0
    for e, (emotion, ax) in enumerate(zip(EMOTIONS, axes.flat)):
        image = ax.imshow(
            head_importance[e].numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower"
        )
        ax.set_title(emotion)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    reading = SPACE_READING[head_space(meta)]
    fig.colorbar(image, ax=axes, shrink=0.6, label=f"mean drop of {reading} when the head is zeroed")
    fig.suptitle(f"Head importance (step 4b), {head_space(meta)} space")
    _save(plt, fig, out / "head_importance.png", tight=False)


def _long_tail_figure(plt, meta, contrib_mean, head_importance, out: Path) -> None:
    """Pooled neuron contributions and head importances, sorted."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for e, emotion in enumerate(EMOTIONS):
        neurons = contrib_mean[e].flatten().sort(descending=True).values[:200]
        heads = head_importance[e].flatten().sort(descending=True).values[:60]
        left.plot(range(1, len(neurons) + 1), neurons.numpy(), color=COLOURS[e], label=emotion)
        right.plot(range(1, len(heads) + 1), heads.numpy(), color=COLOURS[e], label=emotion)
    left.set_xscale("log")
    left.set_title("Neuron contributions C_mean, all layers pooled, by rank")
    left.set_xlabel("rank")
    left.set_ylabel("C_mean")
    right.set_xscale("log")
    right.set_title(f"Head importance ({head_space(meta)} space), all layers pooled, by rank")
    right.set_xlabel("rank")
    left.legend(fontsize=8)
    _save(plt, fig, out / "neuron_long_tail.png")


def _sublayer_figure(plt, importance, n_layers: int, out: Path) -> None:
    """A heatmap, sublayers interleaved: attn_0, mlp_0, attn_1, ..."""
    fig, ax = plt.subplots(figsize=(min(20, 4 + 0.35 * n_layers), 3.8))
    interleaved = importance.reshape(len(EMOTIONS), -1).numpy()
    limit = float(abs(interleaved).max()) or 1.0
    image = ax.imshow(interleaved, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    ticks = list(range(0, 2 * n_layers, 2 * max(1, n_layers // 10)))
    ax.set_xticks(ticks, [f"A{t // 2}" for t in ticks])
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    fig.colorbar(image, ax=ax, label="I (sums to 1 per emotion)")
    ax.set_title("Sublayer importance I_{L,p} (step 6a): A<l> = attention of layer l, the next column its MLP")
    _save(plt, fig, out / "sublayer_importance.png")


def _validation_figure(plt, records, mode: str, path: Path) -> None:
    """Score change against k, top-k (solid) vs k random (dashed): per emotion for ablation, per scale
    (mean over emotions) for enhancement; neurons and heads, same layer and final state."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    for col, kind in enumerate(("neurons", "heads")):
        for row, score in enumerate(("delta_local", "delta_final")):
            ax = axes[row][col]
            labelled = row == 0 and col == 0
            if mode == "ablate":
                _ablation_curves(ax, records, kind, score, labelled)
            else:
                _enhancement_curves(ax, records, kind, score, labelled)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (components changed)")
            where = "same layer" if score == "delta_local" else "final state, <h_final, v_ref>"
            ax.set_ylabel(f"score change ({where})")
            ax.set_title(f"{kind}: {'ablation' if mode == 'ablate' else 'enhancement (mean over emotions)'}")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle("Top-k (solid) vs k random (dashed) components")
    _save(plt, fig, path)


def _ablation_curves(ax, records, kind: str, score: str, labelled: bool) -> None:
    for e, emotion in enumerate(EMOTIONS):
        for selection, style in (("top", "-"), ("random", "--")):
            points = sorted(
                (r["k"], r[score])
                for r in records
                if r["emotion"] == emotion
                and r["kind"] == kind
                and r["mode"] == "ablate"
                and r["selection"] == selection
            )
            if points:
                label = f"{emotion} {selection}" if labelled else None
                ax.plot(*zip(*points), style, color=COLOURS[e], marker="o", markersize=3, label=label)


def _enhancement_curves(ax, records, kind: str, score: str, labelled: bool) -> None:
    scales = sorted({r["scale"] for r in records if r["mode"] == "enhance"})
    for s_index, scale in enumerate(scales):
        for selection, style in (("top", "-"), ("random", "--")):
            ks = sorted({r["k"] for r in records if r["kind"] == kind})
            points = []
            for k in ks:
                mean = mean_over_emotions(records, kind=kind, mode="enhance", selection=selection, k=k, scale=scale)
                if mean is not None:
                    points.append((k, mean["local" if score == "delta_local" else "final"]))
            if points:
                label = f"scale {scale:g} {selection}" if labelled else None
                colour = COLOURS[s_index % len(COLOURS)]
                ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=label)


def _circuit_size_figure(plt, meta, n_layers: int, d_ff: int, n_heads: int, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    counts = meta["counts_per_layer"]
    for e, emotion in enumerate(EMOTIONS):
        left.plot(
            range(n_layers), counts[emotion]["neurons"], color=COLOURS[e], marker="o", markersize=3, label=emotion
        )
        right.plot(range(n_layers), counts[emotion]["heads"], color=COLOURS[e], marker="o", markersize=3)
    left.set_title(f"Neurons per layer (budget {meta['budget']['neurons']:,} of {n_layers * d_ff:,})")
    right.set_title(f"Heads per layer (budget {meta['budget']['heads']} of {n_layers * n_heads})")
    for ax in (left, right):
        ax.set_xlabel("layer")
    left.legend(fontsize=8)
    _save(plt, fig, out / "circuit_size.png")


def _jaccard_figure(plt, meta, out: Path) -> None:
    import torch

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, kind in zip(axes, ("heads", "neurons")):
        matrix = torch.tensor(meta["jaccard"][kind]["matrix"])
        image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        for i in range(len(EMOTIONS)):
            for j in range(len(EMOTIONS)):
                ax.text(j, i, f"{float(matrix[i, j]):.2f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, fontsize=8)
        ax.set_yticks(range(len(EMOTIONS)), EMOTIONS, fontsize=8)
        ax.set_title(f"{kind}: mean pairwise Jaccard {meta['jaccard'][kind]['mean']:.3f}")
    fig.colorbar(image, ax=axes, shrink=0.8)
    _save(plt, fig, out / "jaccard.png", tight=False)
