"""Stage 2, `heads` (protocol step 4b): importance of head h of layer l = mean over the emotion's accepted
rows of `s - s_masked`, with `s = <m^(l), v_e,attn^(l)>` at the last prompt token and `s_masked` the same
with the head's slice of the o_proj input zeroed. `m` depends on `head_space` (see
`sev_bench.discovery.circuit`): the MLP's input (default, as the authors) or the raw mid-layer residual.

Batched: each prompt is prefilled once without its last token; then one decode step runs that token for
many copies of each prompt, every copy zeroing a different head, and the forward stops after the deepest
layer measured (before its MLP). torch is imported inside the functions (heavy)."""

from __future__ import annotations

from ...backends.hf import HFGenerator
from ...interventions import Capture, HookSession, InterventionSpec
from ...prompts import EMOTIONS
from ..circuit_config import HEAD_SPACES
from ..last_token import LastTokenBatch, chunks, length_batches
from .job import CircuitJob


def head_importance(
    loaded, texts, emotions, attn_directions, *, space="mlp_input", batch_size=16, max_rows=128, bar=None
):
    """Stage 2 (step 4b), batched: returns (sums [6, L, H] of s - s_masked over each emotion's prompts,
    counts [6]), `s` the projection on the attention direction of the MLP's input (`space="mlp_input"`,
    the authors' reading) or of the raw mid residual (`"residual"`). One decode step carries a clean copy
    and one copy per (layer, head) of a chunk for every prompt of a batch; the forward stops after the
    chunk's deepest layer (before its MLP)."""
    import torch

    site = HEAD_SPACES[space]
    n_layers, n_heads, head_dim = loaded.num_layers, loaded.num_heads, loaded.head_dim
    sums, counts = torch.zeros(len(EMOTIONS), n_layers, n_heads), torch.zeros(len(EMOTIONS))
    pairs = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    prompts_per_batch = max(1, min(batch_size, max_rows // (n_heads + 1)))
    generated = frozenset({"generated"})
    for indices in length_batches(loaded, texts, prompts_per_batch):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b, emo = len(indices), emotions[indices]
        for chunk in chunks(pairs, max(1, max_rows // b - 1)):
            copies = len(chunk) + 1  # copy 0 is clean; row = copy * b + prompt
            rows = torch.arange(b).repeat(copies)
            layers = sorted({layer for layer, _ in chunk})
            specs = []
            for layer in layers:
                keep = torch.ones(copies * b, n_heads * head_dim)
                for c, (at, head) in enumerate(chunk, start=1):
                    if at == layer:
                        keep[c * b : (c + 1) * b, head * head_dim : (head + 1) * head_dim] = 0
                specs.append(InterventionSpec("attn_head", layer, "scale", keep, positions=generated))
            captures = [Capture(site, layer, decode=True) for layer in layers]
            captured, _ = batch.step(rows, specs, captures, stop_after=(site, layers[-1]))
            for layer in layers:
                v = attn_directions[emo, layer]  # [b, d]
                s = (captured[(site, layer)].view(copies, b, -1) * v[None]).sum(-1)  # [copies, b]
                for c, (at, head) in enumerate(chunk, start=1):
                    if at == layer:
                        sums[:, layer, head].index_add_(0, emo, s[0] - s[c])
            if bar is not None:
                bar.update(len(chunk) * b)
        counts.index_add_(0, emo, torch.ones(b))
    return sums, counts


def head_importance_naive(loaded, texts, emotions, attn_directions, *, space="mlp_input"):
    """The reference loop (the authors' script): one full forward per head per prompt, reading the same
    `space` as `head_importance`. For the benchmark and the tests only."""
    import torch


    site = HEAD_SPACES[space]
    n_layers, n_heads = loaded.num_layers, loaded.num_heads
    sums, counts = torch.zeros(len(EMOTIONS), n_layers, n_heads), torch.zeros(len(EMOTIONS))
    encoder = HFGenerator(loaded, 1)

    def score(encoded, layer, specs, direction):
        with HookSession(loaded, specs, [Capture(site, layer)]) as session, torch.inference_mode():
            loaded.model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask, logits_to_keep=1)
        return float(session.captured[(site, layer)][0][0] @ direction)

    for text, e in zip(texts, emotions.tolist()):
        encoded = encoder.encode([text])
        for layer in range(n_layers):
            direction = attn_directions[e, layer]
            clean = score(encoded, layer, [], direction)
            for head in range(n_heads):
                spec = InterventionSpec("attn_head", layer, "ablate", index=head, positions=frozenset({"prompt"}))
                sums[e, layer, head] += clean - score(encoded, layer, [spec], direction)
        counts[e] += 1
    return sums, counts


def describe(job: CircuitJob) -> str:
    n_layers, n_heads = job.loaded.num_layers, job.loaded.num_heads
    return (
        f"{n_layers * n_heads} heads x {len(job.inputs.rows)} prompts, batched copies of the last token "
        f"(read in the {job.config.head_space} space)"
    )


def total(job: CircuitJob, earlier: dict) -> int:
    return len(job.inputs.rows) * job.loaded.num_layers * job.loaded.num_heads  # decode copies


def compute(job: CircuitJob, earlier: dict, bar) -> tuple[dict, dict]:
    """{"head_importance": [6, L, H] mean s - s_masked, "rows_per_emotion": [6]}, and the head space."""
    sums, counts = head_importance(
        job.loaded,
        job.inputs.emotion_texts,
        job.inputs.emotions,
        job.directions["attn"],
        space=job.config.head_space,
        batch_size=job.batch_size,
        max_rows=job.max_rows,
        bar=bar,
    )
    tensors = {"head_importance": sums / counts.clamp_min(1)[:, None, None], "rows_per_emotion": counts}
    return tensors, {"head_space": job.config.head_space}
