"""`report.md` of a circuit artifact (its figures: `circuit_figures`): inputs, wall time per stage, head
importance, the long tails, causal validation, sublayer importance and the global circuits, each compared
with the paper's figures."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from ..prompts import EMOTIONS
from .circuit_figures import write_circuit_figures
from .circuit_summary import SPACE_READING, head_space, long_tail_figures, validation_summary
from .stages.integration import paper_share_budget


def write_circuit_report(circuit, acts, head_tensors, sub_tensors, records, out: Path) -> None:
    """report.md and its PNGs into `out`, from the circuit and its stages' tensors and validation records."""
    meta = circuit.metadata
    head_importance = head_tensors["head_importance"]
    contrib_mean = acts["contrib_mean"]
    importance = sub_tensors["importance"]
    write_circuit_figures(meta, contrib_mean, head_importance, importance, records, out)
    write_text_atomic(out / "report.md", _markdown(meta, contrib_mean, head_importance, importance, records))


def _markdown(meta, contrib_mean, head_importance, importance, records) -> str:
    lines = [
        *_inputs_lines(meta),
        *_timing_lines(meta),
        *_head_lines(meta, head_importance),
        *_long_tail_lines(meta, contrib_mean, head_importance),
        *_validation_lines(meta, records),
        *_sublayer_lines(importance),
        *_global_lines(meta),
    ]
    return "\n".join(lines)


def _inputs_lines(meta) -> list[str]:
    config, model, arch = meta["config"], meta["model"], meta["architecture"]
    return [
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
    ]


def _timing_lines(meta) -> list[str]:
    lines = ["## Wall time per stage", "", "| stage | seconds | |", "| --- | --- | --- |"]
    for name, info in meta["timings"].items():
        lines.append(f"| {name} | {info['seconds']} | {'reused from cache' if info.get('reused') else ''} |")
    return [*lines, "", "(`report` is recorded in metadata.json; it is written after this table.)", ""]


def _head_lines(meta, head_importance) -> list[str]:
    lines = [
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
    return lines


def _long_tail_lines(meta, contrib_mean, head_importance) -> list[str]:
    lines = [
        "",
        "## Long tail",
        "",
        "![long tail](neuron_long_tail.png)",
        "",
        "| emotion | top head | median head | heads > 0.1 | heads > 10% of top | top neuron C | 20th neuron C | "
        "top / 20th | top / median abs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for emotion, t in long_tail_figures(contrib_mean, head_importance).items():
        lines.append(
            f"| {emotion} | {t['top_head']:.3g} | {t['median_head']:.2g} | {100 * t['heads_over_0.1']:.1f}% | "
            f"{100 * t['heads_over_10pct_of_top']:.1f}% | {t['top_neuron']:.3g} | {t['neuron_rank20']:.3g} | "
            f"{t['top_over_rank20']:.1f} | {t['top_over_median_abs']:.0f} |"
        )
    return [*lines, "", _paper_tail_line(meta)]


def _paper_tail_line(meta) -> str:
    if head_space(meta) == "mlp_input":
        return (
            "The paper (Llama-3.2-3B, head importance in the same space, the MLP's input): top-1 head importance "
            "1.1-2.4 against a median of about 0.001, 5-11% of heads above 0.1; top neurons dominate "
            "lower-ranked ones more than 30x."
        )
    return (
        "The paper's head figures (Llama-3.2-3B: top-1 head importance 1.1-2.4, median about 0.001, 5-11% of "
        "heads above 0.1) are read on the MLP's input, post_attention_layernorm(h_mid); these heads were read "
        "on the raw residual (`head_space: residual`), whose scale is the residual's, so the head columns "
        "above are not comparable with them (rediscover with `head_space: mlp_input` to compare). Neurons: "
        "top neurons dominate lower-ranked ones more than 30x in the paper."
    )


def _validation_lines(meta, records) -> list[str]:
    lines = [
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
    return lines


def _sublayer_lines(importance) -> list[str]:
    lines = [
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
    return lines


def _global_lines(meta) -> list[str]:
    lines = [
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
    return lines


def _fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _budget_line(meta, config, arch) -> str:
    budget = meta["budget"]
    rule = budget.get("rule", "per_sublayer")
    if rule == "per_sublayer":
        how = (
            f"rule `per_sublayer`: {budget['total']} = {config['budget_per_sublayer']:g} x {2 * arch['num_layers']} "
            f"sublayers, neuron share {config['neuron_share']}"
        )
    else:
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


def _percent(share: dict) -> str:
    return f"{share['selected']:,} / {share['total']:,} ({share['percent']:.3g}%)"

