"""Stage 3, `sublayers` (protocol step 6a): `I_{L,p} = (mean <h_final', v_ref> - mean <h_final, v_ref>) /
(alpha sigma_{L,p})` with `alpha sigma_{L,p} v_hat` added to the sublayer output at the last token of the
neutral prompt (no emotion), h_final the post-norm last hidden state, v_ref the job's reference direction,
v_hat the local direction aligned to v_ref; averaged over alpha, normalised to sum 1 per emotion. Batched
like the heads (one copy per (emotion, alpha, sublayer)). torch is imported inside the functions (heavy)."""

from __future__ import annotations

from ...interventions import InterventionSpec
from ...prompts import EMOTIONS
from ..circuit_math import aligned_to, normalise_importance, sublayer_importance
from ..last_token import LastTokenBatch, chunks, length_batches
from .job import CircuitJob


def sublayer_effects(
    loaded, texts, emotion_sets, inject, sigma, v_ref, alphas, *, batch_size=16, max_rows=128, bar=None
):
    """Stage 3 (step 6a): delta sums [6, A, L, 2] of <h_final, v_ref_e> when alpha sigma_{L,p} inject[e, L, p]
    is added to sublayer (L, p)'s output at the last token, and counts [6]. `texts` are neutral prompts,
    `emotion_sets[i]` the emotions prompt i counts for; inject [6, L, 2, d] unit directions."""
    import torch

    n_layers, n_alpha = loaded.num_layers, len(alphas)
    sums, counts = torch.zeros(len(EMOTIONS), n_alpha, n_layers, 2), torch.zeros(len(EMOTIONS))
    configs = [
        (e, a, layer, p)
        for e in range(len(EMOTIONS))
        for a in range(n_alpha)
        for layer in range(n_layers)
        for p in range(2)
    ]
    generated = frozenset({"generated"})
    sites = ("attn_out", "mlp_out")
    for indices in length_batches(loaded, texts, max(1, min(batch_size, max_rows // 16))):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b = len(indices)
        jobs = [(i, config) for config in configs for i in range(b) if config[0] in emotion_sets[indices[i]]]
        for chunk in chunks(jobs, max(1, max_rows - b)):
            rows = torch.tensor(list(range(b)) + [i for i, _ in chunk])
            values: dict[tuple[str, int], object] = {}
            for r, (_, (e, a, layer, p)) in enumerate(chunk, start=b):
                key = (sites[p], layer)
                if key not in values:
                    values[key] = torch.zeros(len(rows), inject.shape[-1])
                values[key][r] = alphas[a] * sigma[layer, p] * inject[e, layer, p]
            specs = [
                InterventionSpec(site, layer, "add", v, positions=generated) for (site, layer), v in values.items()
            ]
            _, final = batch.step(rows, specs)
            clean = final[:b] @ v_ref.T  # [b, 6]
            job_prompt = torch.tensor([i for i, _ in chunk])
            job_config = torch.tensor([config for _, config in chunk])  # [n, 4]: e, a, layer, p
            changed = (final[b:] * v_ref[job_config[:, 0]]).sum(-1) - clean[job_prompt, job_config[:, 0]]
            sums.index_put_(tuple(job_config.T), changed, accumulate=True)
            if bar is not None:
                bar.update(len(chunk))
        for i in indices:
            for e in emotion_sets[i]:
                counts[e] += 1
    return sums, counts


def injection_directions(directions: dict, v_ref):
    """[6, L, 2, d]: the attention (p=0) and MLP (p=1) directions, each flipped to agree with v_ref."""
    import torch

    v = v_ref[:, None]
    return torch.stack([aligned_to(directions["attn"], v), aligned_to(directions["mlp"], v)], dim=2)


def describe(job: CircuitJob) -> str:
    n_layers, alphas = job.loaded.num_layers, job.config.alphas
    return f"{2 * n_layers} sublayers x {len(alphas)} alphas on {len(job.inputs.neutral_texts)} neutral prompts"


def total(job: CircuitJob, earlier: dict) -> int:
    prompts_per_emotion = sum(len(s) for s in job.inputs.neutral_emotions)
    return prompts_per_emotion * len(job.config.alphas) * job.loaded.num_layers * 2  # decode copies


def compute(job: CircuitJob, earlier: dict, bar) -> tuple[dict, dict]:
    """Raw and normalised importance [6, L, 2], the mean change per alpha [6, A, L, 2], v_ref and the
    prompts per emotion; reads sigma from the activations stage."""
    sigma, alphas = earlier["activations"]["sigma"], job.config.alphas
    sums, counts = sublayer_effects(
        job.loaded,
        job.inputs.neutral_texts,
        job.inputs.neutral_emotions,
        injection_directions(job.directions, job.v_ref),
        sigma,
        job.v_ref,
        alphas,
        batch_size=job.batch_size,
        max_rows=job.max_rows,
        bar=bar,
    )
    raw = sublayer_importance(sums, counts, alphas, sigma)
    tensors = {
        "importance_raw": raw,
        "importance": normalise_importance(raw),
        "delta_per_alpha": sums / counts.clamp_min(1)[:, None, None, None],
        "v_ref": job.v_ref,
        "prompts_per_emotion": counts,
    }
    return tensors, {"reference_layers": job.reference_layers}
