"""Stage 4, `validation` (paper section 6): at the most important layer of each kind (or given layers),
ablation of the top-k neurons / heads vs k random ones, and enhancement (adding `scale * dmu` to those
components), over a grid of k and scales. The scores are the ranking's projection at that layer (for heads
in the `head_space` they were ranked in) and <h_final, v_ref>; one record per (emotion, probe), averaged
over the emotion's prompts. torch is imported inside the functions (heavy)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ...errors import UserError
from ...interventions import Capture, InterventionSpec
from ...prompts import EMOTIONS
from ..circuit_config import HEAD_SPACES, KINDS
from ..last_token import LastTokenBatch, chunks, length_batches
from .job import CircuitJob

SITE_OF = {"neurons": "mlp_neuron", "heads": "attn_head"}  # where a kind's components are changed
GENERATED = frozenset({"generated"})


@dataclass(frozen=True)
class _Probe:
    """One validation configuration for one prompt."""

    kind: str  # neurons | heads
    layer: int
    mode: str  # ablate | enhance
    selection: str  # top | random
    k: int
    scale: float  # enhancement scale (0 for ablation)


def validation_probes(emotion: int, layers: dict, ks: dict, scales) -> list[_Probe]:
    probes = []
    for kind in KINDS:
        for layer in layers[(emotion, kind)]:
            for k in ks[kind]:
                probes += [_Probe(kind, layer, "ablate", sel, k, 0.0) for sel in ("top", "random")]
                probes += [
                    _Probe(kind, layer, "enhance", sel, k, float(s)) for s in scales for sel in ("top", "random")
                ]
    return probes


def validation_layers(spec: str, importance_raw, num_layers: int) -> dict:
    """(emotion, kind) -> layers: `auto` = the layer of largest I_{L,p} (p = mlp for neurons, attn for heads)."""
    if spec.strip() == "auto":
        return {
            (e, kind): [int(importance_raw[e, :, 1 if kind == "neurons" else 0].argmax())]
            for e in range(len(EMOTIONS))
            for kind in KINDS
        }
    try:
        chosen = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"validation layers {spec!r}: expected auto or a comma list of layers") from None
    if not chosen or any(not 0 <= layer < num_layers for layer in chosen):
        raise UserError(f"validation layers {spec!r}: this model has layers 0..{num_layers - 1}")
    return {(e, kind): chosen for e in range(len(EMOTIONS)) for kind in KINDS}



def validate_components(
    loaded,
    texts,
    emotions,
    sample_numbers,
    rankings,
    dmu,
    directions,
    v_ref,
    layers,
    *,
    ks,
    scales,
    head_space="mlp_input",
    seed=0,
    batch_size=16,
    max_rows=128,
    bar=None,
) -> list[dict]:
    """Ablation / enhancement of the top-k vs k random components. `rankings` and `dmu` map a kind to
    [6, L, n] scores and [6, L, width] difference vectors; `directions` maps "attn"/"mlp" to [6, L, d];
    `layers[(e, kind)]` the layers to probe. The heads' local score is read in `head_space`, the space
    they were ranked in. Returns one record per (emotion, probe)."""
    import torch

    # kind -> (capture site of its local score, the direction position it is projected on)
    score_site = {"neurons": ("resid_post", "mlp"), "heads": (HEAD_SPACES[head_space], "attn")}
    order = {kind: torch.argsort(-rankings[kind].double(), dim=-1, stable=True) for kind in KINDS}
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    for indices in length_batches(loaded, texts, max(1, min(batch_size, max_rows // 16))):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b = len(indices)
        jobs = []  # (prompt in batch, emotion, probe, component indices)
        for i, index in enumerate(indices):
            e = int(emotions[index])
            generator = torch.Generator().manual_seed(seed * 1_000_003 + int(sample_numbers[index]))
            for probe in validation_probes(e, layers, ks, scales):
                if probe.selection == "top":
                    chosen = order[probe.kind][e, probe.layer, : probe.k]
                else:
                    chosen = torch.randperm(rankings[probe.kind].shape[-1], generator=generator)[: probe.k]
                jobs.append((i, e, probe, chosen))
        for chunk in chunks(jobs, max(1, max_rows - b)):
            rows = torch.tensor(list(range(b)) + [i for i, _, _, _ in chunk])
            specs, used_layers = _chunk_specs(chunk, b, len(rows), dmu, loaded.head_dim)
            captures = sorted(
                {Capture(score_site[kind][0], layer, decode=True) for kind, layer in used_layers},
                key=lambda c: (c.layer, c.site),
            )
            captured, final = batch.step(rows, specs, captures)
            projections = {  # (kind, layer) -> [R, 6] projections on the six emotions' directions
                (kind, layer): (captured[(score_site[kind][0], layer)] @ directions[score_site[kind][1]][:, layer].T)
                for kind, layer in used_layers
            }
            _add_scores(totals, chunk, b, projections, final @ v_ref.T)
            if bar is not None:
                bar.update(len(chunk))
    return _records(totals)


def _chunk_specs(chunk, b: int, n_rows: int, dmu, head_dim: int):
    """The interventions of one decode call: row b + j carries probe j of `chunk` (the first b rows are
    the clean prompts). Returns (specs, the (kind, layer) pairs probed)."""
    import torch

    keep: dict[tuple[str, int], object] = {}
    add: dict[tuple[str, int], object] = {}
    used_layers = set()
    for r, (_, e, probe, chosen) in enumerate(chunk, start=b):
        key = (SITE_OF[probe.kind], probe.layer)
        width = dmu[probe.kind].shape[-1]
        channels = (
            chosen
            if probe.kind == "neurons"
            else (chosen[:, None] * head_dim + torch.arange(head_dim)[None]).reshape(-1)
        )
        if probe.mode == "ablate":
            if key not in keep:
                keep[key] = torch.ones(n_rows, width)
            keep[key][r, channels] = 0
        else:
            if key not in add:
                add[key] = torch.zeros(n_rows, width)
            add[key][r, channels] = probe.scale * dmu[probe.kind][e, probe.layer, channels]
        used_layers.add((probe.kind, probe.layer))
    specs = [InterventionSpec(site, layer, "scale", v, positions=GENERATED) for (site, layer), v in keep.items()]
    specs += [InterventionSpec(site, layer, "add", v, positions=GENERATED) for (site, layer), v in add.items()]
    return specs, used_layers


def _add_scores(totals: dict, chunk, b: int, projections: dict, final_projections) -> None:
    """Adds each probe's score changes against its clean prompt (and the clean scores) to `totals`."""
    projections = {key: value.tolist() for key, value in projections.items()}
    final_projections = final_projections.tolist()
    for r, (i, e, probe, _) in enumerate(chunk, start=b):
        local_projections = projections[(probe.kind, probe.layer)]
        clean_local, local = local_projections[i][e], local_projections[r][e]
        clean_final, final_score = final_projections[i][e], final_projections[r][e]
        record = totals[(e, probe)]
        record[0] += local - clean_local
        record[1] += final_score - clean_final
        record[2] += 1
        record[3] += clean_local
        record[4] += clean_final


def _records(totals: dict) -> list[dict]:
    """One record per (emotion, probe), the sums turned into means, in a fixed order."""

    def order(item):
        e, probe = item[0]
        return (e, KINDS.index(probe.kind), probe.layer, probe.mode, probe.selection, probe.k, probe.scale)

    records = []
    for (e, probe), (d_local, d_final, n, c_local, c_final) in sorted(totals.items(), key=order):
        records.append(
            {
                "emotion": EMOTIONS[e],
                "kind": probe.kind,
                "layer": probe.layer,
                "mode": probe.mode,
                "selection": probe.selection,
                "k": probe.k,
                "scale": probe.scale,
                "n": int(n),
                "delta_local": d_local / n,
                "delta_final": d_final / n,
                "clean_local": c_local / n,
                "clean_final": c_final / n,
            }
        )
    return records


def validation_plan(job: CircuitJob, importance_raw) -> tuple[dict, dict]:
    """(layers to probe per (emotion, kind), the k values per kind that fit the model)."""
    layers = validation_layers(job.config.validation_layers, importance_raw, job.loaded.num_layers)
    ks = {
        "neurons": [k for k in job.config.validation_k if k <= job.loaded.model.config.intermediate_size],
        "heads": [k for k in job.config.validation_k if k <= job.loaded.num_heads],
    }
    return layers, ks


def describe(job: CircuitJob) -> str:
    return "top-k vs random ablation and enhancement"


def total(job: CircuitJob, earlier: dict) -> int:
    layers, ks = validation_plan(job, earlier["sublayers"]["importance_raw"])
    scales = job.config.validation_scales
    return sum(len(validation_probes(int(e), layers, ks, scales)) for e in job.inputs.emotions)  # decode copies


def compute(job: CircuitJob, earlier: dict, bar) -> tuple[dict, dict]:
    """No tensors of its own (a marker); the records go into the info."""
    import torch

    acts, heads = earlier["activations"], earlier["heads"]
    layers, ks = validation_plan(job, earlier["sublayers"]["importance_raw"])
    records = validate_components(
        job.loaded,
        job.inputs.emotion_texts,
        job.inputs.emotions,
        job.inputs.numbers,
        {"neurons": acts["contrib_mean"], "heads": heads["head_importance"]},
        {"neurons": acts["dmu_mlp"], "heads": acts["dmu_attn"]},
        job.directions,
        job.v_ref,
        layers,
        ks=ks,
        scales=job.config.validation_scales,
        head_space=job.config.head_space,
        seed=job.config.seed,
        batch_size=job.batch_size,
        max_rows=job.max_rows,
        bar=bar,
    )
    return {"done": torch.ones(1)}, {"records": records}
