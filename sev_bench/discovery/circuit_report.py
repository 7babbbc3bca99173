"""`report.md` + PNGs for a circuit artifact: head importance, the neuron contribution long tail, sublayer
importance, ablation / enhancement curves, circuit size per layer and the emotions' overlap."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from ..prompts import EMOTIONS
from .report import PNG_METADATA, _pyplot

COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:brown")
# What head importance projects, per head_space (metadata config; an artifact without one read the residual).
SPACE_READING = {
    "mlp_input": "<post_attention_layernorm(h_mid), v_attn>",
    "residual": "<h_mid, v_attn>",
}


def head_space(meta) -> str:
    return meta["config"].get("head_space", "residual")


def _percent(share: dict) -> str:
    return f"{share['selected']:,} / {share['total']:,} ({share['percent']:.3g}%)"


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


def _mean_over_emotions(records, **match):
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
                row[f"{mode}_{selection}"] = _mean_over_emotions(records, **match)
            rows.append(row)
    return rows


def write_circuit_report(circuit, acts, head_tensors, sub_tensors, records, out: Path) -> None:
    import torch

    plt = _pyplot()
    meta = circuit.metadata
    n_layers = circuit.num_layers
    head_importance = head_tensors["head_importance"]
    contrib_mean = acts["contrib_mean"]
    importance = sub_tensors["importance"]

    # 1. head importance heatmaps
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
    fig.savefig(out / "head_importance.png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)

    # 2. long tails: pooled neuron contributions and head importances, sorted
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
    fig.tight_layout()
    fig.savefig(out / "neuron_long_tail.png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)

    # 3. sublayer importance heatmap (interleaved attn_0, mlp_0, attn_1, ...)
    fig, ax = plt.subplots(figsize=(min(20, 4 + 0.35 * n_layers), 3.8))
    interleaved = importance.reshape(len(EMOTIONS), -1).numpy()
    limit = float(abs(interleaved).max()) or 1.0
    image = ax.imshow(interleaved, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    ticks = list(range(0, 2 * n_layers, 2 * max(1, n_layers // 10)))
    ax.set_xticks(ticks, [f"A{t // 2}" for t in ticks])
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    fig.colorbar(image, ax=ax, label="I (sums to 1 per emotion)")
    ax.set_title("Sublayer importance I_{L,p} (step 6a): A<l> = attention of layer l, the next column its MLP")
    fig.tight_layout()
    fig.savefig(out / "sublayer_importance.png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)

    # 4. validation curves
    _validation_figures(plt, records, out)

    # 5. circuit size per layer
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    counts = meta["counts_per_layer"]
    for e, emotion in enumerate(EMOTIONS):
        left.plot(
            range(n_layers), counts[emotion]["neurons"], color=COLOURS[e], marker="o", markersize=3, label=emotion
        )
        right.plot(range(n_layers), counts[emotion]["heads"], color=COLOURS[e], marker="o", markersize=3)
    left.set_title(f"Neurons per layer (budget {meta['budget']['neurons']:,} of {n_layers * contrib_mean.shape[2]:,})")
    right.set_title(f"Heads per layer (budget {meta['budget']['heads']} of {n_layers * head_importance.shape[2]})")
    for ax in (left, right):
        ax.set_xlabel("layer")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "circuit_size.png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)

    # 6. Jaccard overlap
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
    fig.savefig(out / "jaccard.png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)

    write_text_atomic(out / "report.md", _markdown(meta, contrib_mean, head_importance, importance, records))


def _validation_figures(plt, records, out: Path) -> None:
    for mode, name in (("ablate", "validation_ablation.png"), ("enhance", "validation_enhancement.png")):
        fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
        for col, kind in enumerate(("neurons", "heads")):
            for row, score in enumerate(("delta_local", "delta_final")):
                ax = axes[row][col]
                if mode == "ablate":
                    for e, emotion in enumerate(EMOTIONS):
                        for selection, style in (("top", "-"), ("random", "--")):
                            points = sorted(
                                (r["k"], r[score])
                                for r in records
                                if r["emotion"] == emotion
                                and r["kind"] == kind
                                and r["mode"] == mode
                                and r["selection"] == selection
                            )
                            if points:
                                ax.plot(
                                    *zip(*points),
                                    style,
                                    color=COLOURS[e],
                                    marker="o",
                                    markersize=3,
                                    label=f"{emotion} {selection}" if row == 0 and col == 0 else None,
                                )
                else:
                    scales = sorted({r["scale"] for r in records if r["mode"] == mode})
                    for s_index, scale in enumerate(scales):
                        for selection, style in (("top", "-"), ("random", "--")):
                            ks = sorted({r["k"] for r in records if r["kind"] == kind})
                            points = []
                            for k in ks:
                                mean = _mean_over_emotions(
                                    records, kind=kind, mode=mode, selection=selection, k=k, scale=scale
                                )
                                if mean is not None:
                                    points.append((k, mean["local" if score == "delta_local" else "final"]))
                            if points:
                                ax.plot(
                                    *zip(*points),
                                    style,
                                    color=COLOURS[s_index % len(COLOURS)],
                                    marker="o",
                                    markersize=3,
                                    label=f"scale {scale:g} {selection}" if row == 0 and col == 0 else None,
                                )
                ax.axhline(0, color="grey", linewidth=0.8)
                ax.set_xscale("log", base=2)
                ax.set_xlabel("k (components changed)")
                where = "same layer" if score == "delta_local" else "final state, <h_final, v_ref>"
                ax.set_ylabel(f"score change ({where})")
                ax.set_title(f"{kind}: {'ablation' if mode == 'ablate' else 'enhancement (mean over emotions)'}")
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.suptitle("Top-k (solid) vs k random (dashed) components")
        fig.tight_layout()
        fig.savefig(out / name, dpi=80, metadata=PNG_METADATA)
        plt.close(fig)


def _fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _markdown(meta, contrib_mean, head_importance, importance, records) -> str:
    config, model, arch = meta["config"], meta["model"], meta["architecture"]
    timings = meta["timings"]
    lines = [
        f"# Emotion circuits: {model['id']}",
        "",
        f"- model: `{model['id']}` ({model['architecture']}, {arch['num_layers']} layers, {arch['num_heads']} heads x "
        f"{arch['head_dim']}, d_ff {arch['intermediate_size']}, revision `{model['revision']}`)",
        "- dataset sha256: "
        + ", ".join(f"{split} `{sha[:12]}…`" for split, sha in meta["dataset_sha256"].items())
        + f"; train rows used: {meta['train_rows']}"
        + (f" (limit {config['limit']})" if config["limit"] else " (the whole train split)"),
        f"- acceptance: `{config['accept']}`"
        + (
            f" (scorer `{meta['scorer']['id']}`, sha256 `{meta['scorer_sha256'][:12]}…`)"
            if meta["scorer"]
            else " (every row counts)"
        )
        + f"; accepted rows {meta['accepted_rows']} ("
        + ", ".join(f"{e} {n}" for e, n in meta["rows_per_emotion"].items())
        + ")",
        f"- complete (skeleton, valence) groups for the difference vectors: {meta['groups']} ("
        + ", ".join(f"{v} {n}" for v, n in meta["groups_by_valence"].items())
        + ")",
        f"- directions: `{meta['directions']['path']}` (sha256 `{meta['directions']['sha256'][:12]}…`)",
        _budget_line(meta, config, arch),
        f"- v_ref layers: {meta['reference_layers']}; alphas {config['alphas']}",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds | |",
        "| --- | --- | --- |",
    ]
    for name, info in timings.items():
        lines.append(f"| {name} | {info['seconds']} | {'reused from cache' if info.get('reused') else ''} |")
    lines += [
        "",
        "(`report` is recorded in metadata.json; it is written after this table.)",
        "",
        "## Head importance (step 4b)",
        "",
        _space_line(meta),
        "",
        "![head importance](head_importance.png)",
        "",
        "| emotion | top heads (layer, head, importance) |",
        "| --- | --- |",
    ]
    n_heads = head_importance.shape[2]
    for e, emotion in enumerate(EMOTIONS):
        flat = head_importance[e].flatten()
        top = flat.argsort(descending=True)[:5].tolist()
        lines.append(
            f"| {emotion} | " + ", ".join(f"({i // n_heads}, {i % n_heads}, {float(flat[i]):.3g})" for i in top) + " |"
        )
    tails = long_tail_figures(contrib_mean, head_importance)
    lines += [
        "",
        "## Long tail",
        "",
        "![long tail](neuron_long_tail.png)",
        "",
        "| emotion | top head | median head | heads > 0.1 | heads > 10% of top | top neuron C | 20th neuron C | "
        "top / 20th | top / median abs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for emotion, t in tails.items():
        lines.append(
            f"| {emotion} | {t['top_head']:.3g} | {t['median_head']:.2g} | {100 * t['heads_over_0.1']:.1f}% | "
            f"{100 * t['heads_over_10pct_of_top']:.1f}% | {t['top_neuron']:.3g} | {t['neuron_rank20']:.3g} | "
            f"{t['top_over_rank20']:.1f} | {t['top_over_median_abs']:.0f} |"
        )
    if head_space(meta) == "mlp_input":
        paper = (
            "The paper (Llama-3.2-3B, head importance in the same space, the MLP's input): top-1 head importance "
            "1.1-2.4 against a median of about 0.001, 5-11% of heads above 0.1; top neurons dominate "
            "lower-ranked ones more than 30x."
        )
    else:
        paper = (
            "The paper's head figures (Llama-3.2-3B: top-1 head importance 1.1-2.4, median about 0.001, 5-11% of "
            "heads above 0.1) are read on the MLP's input, post_attention_layernorm(h_mid); these heads were read "
            "on the raw residual (`head_space: residual`), whose scale is the residual's, so the head columns "
            "above are not comparable with them (rediscover with `head_space: mlp_input` to compare). Neurons: "
            "top neurons dominate lower-ranked ones more than 30x in the paper."
        )
    lines += [
        "",
        paper,
        "",
        "## Causal validation (ablation and enhancement)",
        "",
        "Layers probed (the layer of largest sublayer importance per emotion and kind unless given): "
        + ", ".join(f"{k} {v}" for k, v in meta["validation_layers"].items())
        + ".",
        "Components are changed at the last prompt token; scores are the ranking's projection at that layer "
        f"(`{SPACE_READING[head_space(meta)]}` for heads, `<h_out, v_mlp>` for neurons) and `<h_final, v_ref>` "
        "(post-norm). Full table: `validation.csv`.",
        "",
        "![ablation](validation_ablation.png)",
        "",
        "![enhancement](validation_enhancement.png)",
        "",
        "Mean over emotions of the score change (same layer / final):",
        "",
        "| kind | k | ablate top | ablate random | enhance top | enhance random |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    summary = validation_summary(records)
    for row in summary:
        cells = []
        for name in ("ablate_top", "ablate_random", "enhance_top", "enhance_random"):
            value = row[name]
            cells.append("–" if value is None else f"{_fmt(value['local'])} / {_fmt(value['final'])}")
        lines.append(f"| {row['kind']} | {row['k']} | " + " | ".join(cells) + " |")
    if summary and summary[0]["scale"] is not None:
        lines += ["", f"Enhancement columns at scale {summary[0]['scale']:g} (all scales in the figure and the CSV)."]
    lines += [
        "",
        "## Sublayer importance (step 6a)",
        "",
        "![sublayer importance](sublayer_importance.png)",
        "",
        "| emotion | peak attention sublayer | peak MLP sublayer | share of I in the last third |",
        "| --- | --- | --- | --- |",
    ]
    n_layers = importance.shape[1]
    for e, emotion in enumerate(EMOTIONS):
        attn, mlp = importance[e, :, 0], importance[e, :, 1]
        last_third = float(importance[e, (2 * n_layers) // 3 :].sum())
        lines.append(
            f"| {emotion} | L{int(attn.argmax())} ({float(attn.max()):.3f}) | L{int(mlp.argmax())} "
            f"({float(mlp.max()):.3f}) | {last_third:.2f} |"
        )
    lines += [
        "",
        "## Global circuits (step 6b)",
        "",
        "![circuit size](circuit_size.png)",
        "",
        "![Jaccard overlap](jaccard.png)",
        "",
        f"- heads: mean pairwise Jaccard {meta['jaccard']['heads']['mean']:.3f} ± "
        f"{meta['jaccard']['heads']['std']:.3f} "
        "(paper: 0.454 ± 0.047)",
        f"- neurons: mean pairwise Jaccard {meta['jaccard']['neurons']['mean']:.3f} ± "
        f"{meta['jaccard']['neurons']['std']:.3f} (paper: 0.056 ± 0.033)",
        *_shares_lines(meta),
        "",
        "| emotion | heads per layer | neurons per layer |",
        "| --- | --- | --- |",
    ]
    for emotion in EMOTIONS:
        counts = meta["counts_per_layer"][emotion]
        lines.append(f"| {emotion} | {' '.join(map(str, counts['heads']))} | {' '.join(map(str, counts['neurons']))} |")
    lines.append("")
    return "\n".join(lines)


def _budget_line(meta, config, arch) -> str:
    budget = meta["budget"]
    rule = budget.get("rule", "per_sublayer")
    if rule == "per_sublayer":
        how = (
            f"rule `per_sublayer`: {budget['total']} = {config['budget_per_sublayer']:g} x {2 * arch['num_layers']} "
            f"sublayers, neuron share {config['neuron_share']}"
        )
    else:
        from .circuit import paper_share_budget

        paper = budget["paper_shares"]
        how = (
            f"rule `paper_shares`: the shares the paper's budget selects on {paper['model']}, heads "
            f"{_percent(paper['heads'])}, MLP neurons {_percent(paper['neurons'])}, applied to this model"
        )
        shares = paper_share_budget(arch["num_layers"], arch["num_heads"], arch["intermediate_size"])
        raised = [
            f"{kind} {share} -> {budget[kind]}"
            for kind, share in zip(("neurons", "heads"), shares)
            if budget[kind] > share
        ]
        if raised:
            how += f", raised to what the per-layer minimums take ({', '.join(raised)})"
    return (
        f"- budget per emotion: {budget['neurons']} neurons + {budget['heads']} heads ({how}); minimum "
        f"{config['min_neurons']} neurons / {config['min_heads']} heads per layer; cap {config['cap_fraction']} x "
        "budget of the kind"
    )


def _space_line(meta) -> str:
    if head_space(meta) == "mlp_input":
        return (
            "Read as the authors' script reads it (`head_space: mlp_input`): the mean drop of "
            "`<post_attention_layernorm(h_mid), v_attn>` at the last prompt token when the head's slice of the "
            "output-projection input is zeroed, i.e. on the MLP's actual input (the mid-layer residual divided by "
            "its RMS, times the norm's gain), projected on the attention direction v_attn read on the raw mid "
            "residual (as the authors' directions are). The paper's head figures are in this space."
        )
    return (
        "Read on the raw residual (`head_space: residual`): the mean drop of `<h_mid, v_attn>` at the last prompt "
        "token when the head's slice of the output-projection input is zeroed (the head's direct effect on the "
        "direction). The paper's head figures are read on the MLP's input instead; the magnitudes differ."
    )


def _shares_lines(meta) -> list[str]:
    shares = meta["budget"].get("shares")
    if not shares:
        return []
    paper = meta["budget"]["paper_shares"]
    return [
        f"- selected per emotion: heads {_percent(shares['heads'])}, MLP neurons {_percent(shares['neurons'])} "
        f"(paper, {paper['model']}: heads {_percent(paper['heads'])}, neurons {_percent(paper['neurons'])})",
    ]
