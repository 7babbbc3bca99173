"""Stage 1, `activations` (protocol steps 4a and 5): one prefill of the emotion-instructed prompt of every
accepted train row, reading at the last prompt token the MLP down-projection input `a` and the attention
output-projection input `x` of every layer, and the residual after each sublayer.

- neurons: `c = a * (W_down^T v_e)` with `v_e` the MLP direction of the same layer; C_mean / C_pos / C_neg
  per emotion over its accepted rows (all valences).
- difference vectors: `dmu_e = mean_g (x_{g,e} - mean_e' x_{g,e'})` over complete (skeleton, valence)
  groups, for `a` and for `x`.
- sigma_{L,p}: the mean RMS of the last-token residual after the attention sublayer (p=attn) and after
  the layer (p=mlp).

torch is imported inside the functions (heavy)."""

from __future__ import annotations

from ...backends.hf import HFGenerator
from ...interventions import Capture, HookSession
from ...prompts import EMOTIONS
from ..circuit_math import difference_vectors_from_sums, down_proj_betas, neuron_contributions
from ..last_token import length_batches
from .job import CircuitJob


def read_activations(loaded, texts, emotions, in_group, betas, *, batch_size: int = 16, bar=None) -> dict:
    """Stage 1 (steps 4a, 5, sigma): one prefill per prompt. `emotions` [n] emotion index of each prompt,
    `in_group` [n] bool (row of a complete group). Returns the stage's tensors."""
    import torch


    n_layers, n_emotions = loaded.num_layers, len(EMOTIONS)
    d_ff, width = loaded.model.config.intermediate_size, loaded.num_heads * loaded.head_dim
    sums = {name: torch.zeros(n_emotions, n_layers, d_ff) for name in ("mean", "pos", "neg")}
    counts = torch.zeros(n_emotions)
    group_mlp, group_attn = torch.zeros(n_emotions, n_layers, d_ff), torch.zeros(n_emotions, n_layers, width)
    group_counts = torch.zeros(n_emotions)
    rms = torch.zeros(n_layers, 2)
    captures = [Capture(s, layer) for layer in range(n_layers) for s in ("mlp_neuron", "attn_head", "resid_mid")]
    captures += [Capture("resid_post", layer) for layer in range(n_layers)]
    encoder = HFGenerator(loaded, batch_size)
    for indices in length_batches(loaded, texts, batch_size):
        encoded = encoder.encode([texts[i] for i in indices])
        with HookSession(loaded, captures=captures) as session, torch.inference_mode():
            loaded.model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask, logits_to_keep=1)

        def read(site):
            return torch.stack([session.captured[(site, layer)][0] for layer in range(n_layers)], dim=1)

        acts, heads = read("mlp_neuron"), read("attn_head")
        emo = emotions[indices]
        contributions = neuron_contributions(acts, betas[emo])
        sums["mean"].index_add_(0, emo, contributions)
        sums["pos"].index_add_(0, emo, contributions.clamp_min(0))
        sums["neg"].index_add_(0, emo, contributions.clamp_max(0))
        counts.index_add_(0, emo, torch.ones(len(indices)))
        group = in_group[indices]
        group_mlp.index_add_(0, emo[group], acts[group])
        group_attn.index_add_(0, emo[group], heads[group])
        group_counts.index_add_(0, emo[group], torch.ones(int(group.sum())))
        for p, site in enumerate(("resid_mid", "resid_post")):
            rms[:, p] += read(site).pow(2).mean(dim=-1).sqrt().sum(dim=0)
        if bar is not None:
            bar.update(len(indices))
    per_emotion = counts.clamp_min(1)[:, None, None]
    return {
        "contrib_mean": sums["mean"] / per_emotion,
        "contrib_pos": sums["pos"] / per_emotion,
        "contrib_neg": sums["neg"] / per_emotion,
        "rows_per_emotion": counts,
        "dmu_mlp": difference_vectors_from_sums(group_mlp, group_counts),
        "dmu_attn": difference_vectors_from_sums(group_attn, group_counts),
        "groups_per_emotion": group_counts,
        "sigma": rms / len(texts),
    }


def describe(job: CircuitJob) -> str:
    return f"neurons, difference vectors and sigma from {len(job.inputs.rows)} emotion-instructed prompts"


def total(job: CircuitJob, earlier: dict) -> int:
    return len(job.inputs.rows)  # prompts


def compute(job: CircuitJob, earlier: dict, bar) -> tuple[dict, dict]:
    """The stage's tensors (see `read_activations`) and info (accepted rows, complete groups)."""
    inputs = job.inputs
    betas = down_proj_betas(job.loaded, job.directions["mlp"])
    tensors = read_activations(
        job.loaded, inputs.emotion_texts, inputs.emotions, inputs.in_group, betas, batch_size=job.batch_size, bar=bar
    )
    return tensors, {"rows": len(inputs.rows), "groups": inputs.groups}
