"""Emotion circuits (protocol section 2, steps 4-6b): neurons, heads, causal validation, difference vectors,
sublayer importance and the budgeted global circuit that the `circuit` method modulates (step 7).

Stages (`sev-bench discover circuit`), each cached in `<output dir>/stages/` so a killed discovery resumes:

0. `directions`: the emotion directions, through `obtain_directions` (same acceptance and limit).
1. `activations` (steps 4a, 5): one prefill of the emotion-instructed prompt of every accepted train row,
   reading at the last prompt token the MLP down-projection input `a` and the attention output-projection
   input `x` of every layer, and the residual after each sublayer.
   - neurons: `c = a * (W_down^T v_e)` with `v_e` the MLP direction of the same layer; C_mean / C_pos / C_neg
     per emotion over its accepted rows (all valences); ranked by C_mean within each layer.
   - difference vectors: `dmu_e = mean_g (x_{g,e} - mean_e' x_{g,e'})` over complete (skeleton, valence)
     groups, for `a` and for `x` (grouped by skeleton AND valence, over every complete group: the authors'
     MLP script grouped by skeleton alone; not normalised).
   - sigma_{L,p}: the mean RMS of the last-token residual after the attention sublayer (p=attn) and after
     the layer (p=mlp; before the final norm, also in the last layer).
2. `heads` (step 4b): importance of head h of layer l = mean over the emotion's accepted rows of
   `s - s_masked`, with `s = <m^(l), v_e,attn^(l)>` at the last prompt token and `s_masked` the same
   with the head's slice of the o_proj input zeroed. `m` depends on `head_space`:
   - `mlp_input` (default, as the authors' script computes it): the MLP's actual input,
     `post_attention_layernorm(h_mid)` = h_mid / RMS(h_mid) times the norm's learned gain. The paper's
     head-importance figures (top head 1.1-2.4, median about 0.001) are in this space.
   - `residual`: the raw mid-layer residual h_mid = h_in + attn_out (sev-bench's reading before issue 14:
     the head's direct effect <W_O[:, head] x_head, v>, linear in the head's output).
   The direction v_e,attn is the same in both: the directions artifact's `attn` direction, read on the raw
   h_mid, which is also where the authors read theirs (attention output + residual, no norm); so the
   default projects the normalised MLP input on a raw-residual direction, exactly as the authors do.
   Batched: each prompt is prefilled once without its last token; then one decode step runs that token
   for many copies of each prompt, every copy zeroing a different head (per-row specs), and the forward
   stops after the deepest layer measured (before its MLP). Zeroing at the last token is exact here:
   o_proj acts per position and `s` is read at the same layer.
3. `sublayers` (step 6a): `I_{L,p} = (mean <h_final', v_ref> - mean <h_final, v_ref>) / (alpha sigma_{L,p})`
   with `alpha sigma_{L,p} v_hat` added to the sublayer output at the last token of the neutral prompt (no
   emotion), h_final the post-norm last hidden state, v_ref the sign-aligned mean of the attn and mlp
   directions of the protocol's layers 21-25 of 28 (scaled to depth), v_hat the local direction aligned to
   v_ref; averaged over alpha, normalised to sum 1 per emotion. Batched like the heads (one copy per
   (emotion, alpha, sublayer)).
4. `validation` (paper section 6): at the most important layer of each kind (or given layers), ablation
   of the top-k neurons / heads vs k random ones, and enhancement (adding `scale * dmu` to those components),
   over a grid of k and scales; the score is the ranking's projection at that layer (for heads in the
   `head_space` they were ranked in) and <h_final, v_ref>.
5. integration (step 6b): the budget per kind, then a minimum per layer, the rest proportional to
   max(I, 0) (floor + largest remainder), capped at `cap_fraction * K_kind` (and the heads a layer has),
   backfilled; then the top neurons by C_mean and heads by importance in each layer. The budget
   (`budget_rule`):
   - `paper_shares` (default): the shares the paper's budget selects on its model, Llama-3.2-3B-Instruct
     (28 layers x 24 heads, MLP width 8192): K_heads = round(168/672 x this model's heads) (25%),
     K_neurons = round(392/229,376 x this model's MLP neurons) (0.171%); each at least the per-layer
     minimums x layers. A budget of 10 per sublayer keeps neither share on a smaller model (SmolLM2-135M:
     180 of 270 heads, 67%), so the old rule made a dense circuit of a small model.
   - `per_sublayer` (before issue 14): `budget_per_sublayer * 2 * layers`, split neuron_share / rest
     (560 = 392 + 168 on the paper's model, so both rules agree there).
   Cheap; redone when only its settings change.

The artifact (folder): `circuit.safetensors` (`neurons` [6, L, d_ff] and `heads` [6, L, H] selection
masks, `dmu_mlp` [6, L, d_ff], `dmu_attn` [6, L, H*head_dim]), `circuit.json` (the selected indices),
`metadata.json` (model, dataset, scorer, directions sha256, config, the budget and the shares of heads and
neurons selected, timings; written last), `report.md`
+ PNGs, `validation.csv`, and `stages/` (the per-stage analysis tensors).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from .. import __version__, prompts
from ..atomic import write_json_atomic, write_text_atomic
from ..defaults import DEFAULT_SCORER
from ..errors import UserError
from ..hashing import file_sha256, slug
from ..paths import cache_dir, shown_path
from ..prompts import EMOTIONS, VALENCES
from .directions import (
    ACCEPT_MODES,
    MIN_GROUPS,
    _complete_groups,
    model_signature,
    read_artifact,
    seal,
)

ARTIFACT_FORMAT = "sev-bench-circuit/1"
STAGES = ("activations", "heads", "sublayers", "validation")
KINDS = ("neurons", "heads")
# v_ref: the protocol's layers 21-25 of Llama-3.2-3B's 28, as a fraction of depth.
REFERENCE_LAYERS = (21 / 28, 5 / 28)  # first layer, number of layers
# head_space -> the capture site the head importance (and the heads' validation score) reads.
HEAD_SPACES = {"mlp_input": "mlp_in", "residual": "resid_mid"}
BUDGET_RULES = ("paper_shares", "per_sublayer")
# The paper's setup (protocol step 6b): Llama-3.2-3B-Instruct, 28 layers x 24 heads, MLP width 8192;
# K_total = 560 = 10 x 56 sublayers, 392 neurons (0.7) + 168 heads per emotion.
PAPER_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
PAPER_LAYERS, PAPER_HEADS_PER_LAYER, PAPER_D_FF = 28, 24, 8192
PAPER_K_NEURONS, PAPER_K_HEADS = 392, 168
PAPER_TOTAL_HEADS = PAPER_LAYERS * PAPER_HEADS_PER_LAYER  # 672
PAPER_TOTAL_NEURONS = PAPER_LAYERS * PAPER_D_FF  # 229,376


@dataclass(frozen=True)
class CircuitConfig:
    """Discovery settings. Everything but the integration block is part of the analysis key (the cache
    folder); the integration settings only redo the cheap last stage when they change."""

    accept: str = "all"
    limit: int | None = None  # the first N train rows (themes interleaved); None = all
    emotion_system_template: str = prompts.PROMPTING_SYSTEM_TEMPLATE  # steps 4-5 (as the directions)
    neutral_system: str = prompts.NEUTRAL_SYSTEM  # step 6a: no emotion in the prompt
    alphas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    validation_k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    validation_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    validation_layers: str = "auto"  # auto: per emotion and kind, the layer of largest I_{L,p}; or "a,b"
    seed: int = 0  # random controls
    # step 4b: where head importance is read (module docstring): the MLP's input, as the authors, or the
    # raw residual
    head_space: str = "mlp_input"
    # integration (step 6b)
    budget_rule: str = "paper_shares"  # or per_sublayer (budget_per_sublayer x 2L, split by neuron_share)
    budget_per_sublayer: float = 10.0  # per_sublayer only
    neuron_share: float = 0.7  # per_sublayer only
    min_neurons: int = 4
    min_heads: int = 2
    cap_fraction: float = 0.4

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_MODES:
            raise UserError(f"accept={self.accept!r}: expected one of {', '.join(ACCEPT_MODES)}")
        if self.head_space not in HEAD_SPACES:
            raise UserError(f"head_space={self.head_space!r}: expected one of {', '.join(HEAD_SPACES)}")
        if self.budget_rule not in BUDGET_RULES:
            raise UserError(f"budget_rule={self.budget_rule!r}: expected one of {', '.join(BUDGET_RULES)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("the discovery limit must be >= 1 (or absent for the whole train split)")
        if not 0 < self.neuron_share < 1:
            raise UserError(f"neuron_share={self.neuron_share}: expected a share strictly between 0 and 1")
        if self.budget_per_sublayer <= 0:
            raise UserError("the budget per sublayer must be > 0")
        if not 0 < self.cap_fraction <= 1:
            raise UserError("cap_fraction must be in (0, 1]")
        if self.min_neurons < 0 or self.min_heads < 0:
            raise UserError("the minimum quotas must be >= 0")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise UserError("alphas must be positive")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "validation_k", tuple(int(k) for k in self.validation_k))
        object.__setattr__(self, "validation_scales", tuple(float(s) for s in self.validation_scales))

    INTEGRATION = ("budget_rule", "budget_per_sublayer", "neuron_share", "min_neurons", "min_heads", "cap_fraction")

    def analysis(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.INTEGRATION}

    def integration(self) -> dict:
        return {k: (v if isinstance(v := getattr(self, k), str) else float(v)) for k in self.INTEGRATION}


# ============================================================================ pure math (tested on planted data)


def down_proj_betas(loaded, mlp_directions):
    """beta[e, l] = W_down^(l)T v_e^(l): [6, L, d_ff] (the read-out of each neuron onto the direction)."""
    import torch

    rows = []
    for layer in range(loaded.num_layers):
        weight = loaded.layer(layer).get_submodule(loaded.adapter.mlp_down_proj).weight.detach().float().cpu()
        rows.append(mlp_directions[:, layer].float() @ weight)  # [6, d] @ [d, d_ff]
    return torch.stack(rows, dim=1)


def neuron_contributions(activations, betas):
    """c = a * beta (any matching shapes); sum_n c = <W_down a, v> = the MLP output's projection on v."""
    return activations * betas


def difference_vectors(states):
    """dmu [6, ...] from states [groups, 6 emotions, ...]: mean_g (x_{g,e} - mean_e' x_{g,e'}) (step 5)."""
    return (states - states.mean(dim=1, keepdim=True)).mean(dim=0)


def difference_vectors_from_sums(sums, counts):
    """The same from per-emotion sums over the rows of complete groups (each group has all six)."""
    if not bool((counts == counts[0]).all()) or float(counts[0]) == 0:
        raise ValueError(f"every emotion needs the same non-zero number of complete groups, got {counts.tolist()}")
    groups = float(counts[0])
    return sums / groups - sums.sum(dim=0, keepdim=True) / (len(counts) * groups)


def reference_layers(num_layers: int) -> list[int]:
    """The protocol's v_ref layers (21-25 of 28) scaled to this depth."""
    first_fraction, count_fraction = REFERENCE_LAYERS
    count = max(1, round(count_fraction * num_layers))
    first = min(round(first_fraction * num_layers), num_layers - count)
    return list(range(first, first + count))


def reference_direction(vectors):
    """[n, d] unit vectors -> sign-aligned to the first, averaged, renormalised (step 6a's v_ref)."""
    signs = (vectors @ vectors[0]).sign()
    signs[signs == 0] = 1
    mean = (vectors * signs[:, None]).mean(dim=0)
    return mean / mean.norm().clamp_min(1e-12)


def aligned_to(vectors, reference):
    """Each of `vectors` [..., d], flipped where its cosine with `reference` [..., d] is negative."""
    sign = (vectors * reference).sum(-1, keepdim=True).sign()
    sign[sign == 0] = 1
    return vectors * sign


def sublayer_importance(delta_sums, counts, alphas, sigma):
    """I [6, L, 2] = mean over alpha of (mean delta <h_final, v_ref>) / (alpha sigma_{L,p}).
    delta_sums [6, A, L, 2] (sums over an emotion's prompts), counts [6], sigma [L, 2]."""
    import torch

    alpha = torch.tensor(alphas, dtype=delta_sums.dtype)[None, :, None, None]
    mean_delta = delta_sums / counts.clamp_min(1)[:, None, None, None]
    return (mean_delta / (alpha * sigma[None, None].clamp_min(1e-12))).mean(dim=1)


def normalise_importance(raw):
    """Per emotion, divided by the sum over sublayers (sum 1), as the protocol does after the alpha mean."""
    import torch

    total = raw.sum(dim=(1, 2), keepdim=True)
    return raw / torch.where(total.abs() < 1e-12, torch.ones_like(total), total)


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


def top_mask(scores, counts):
    """[L, n] bool: the `counts[l]` highest-scoring entries of each row (ties: the lower index)."""
    import torch

    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for layer, k in enumerate(counts):
        if k > 0:
            order = torch.argsort(-scores[layer].double(), stable=True)
            mask[layer, order[: int(k)]] = True
    return mask


def jaccard_matrix(masks):
    """[6, 6] Jaccard overlap of the emotions' selected sets (masks [6, ...] bool)."""
    import torch

    flat = masks.reshape(masks.shape[0], -1).float()
    inter = flat @ flat.T
    sizes = flat.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def mean_pairwise(matrix) -> tuple[float, float]:
    """Mean and standard deviation of the off-diagonal upper triangle."""
    import torch

    n = matrix.shape[0]
    values = torch.stack([matrix[i, j] for i in range(n) for j in range(i + 1, n)])
    return float(values.mean()), float(values.std(unbiased=False))


# ============================================================================ batched last-token engine


def _cache_argument(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _select_cache(cache, index):
    """A new cache whose batch rows are `cache`'s rows `index` (repeats allowed); `cache` is untouched."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        clone = copy.copy(cache)
        clone.layers = [copy.copy(layer) for layer in layers]
    else:
        clone = copy.deepcopy(cache)
    clone.batch_select_indices(index)
    return clone


class LastTokenBatch:
    """Prompts prefilled without their last token. `step(rows, specs, captures)` then runs the last token
    for copies of them (row r is a copy of prompt rows[r]) as one decode call: per-row specs at positions
    "generated" change that token, decode captures read it, and the post-norm final state comes back."""

    def __init__(self, loaded, texts: list[str]) -> None:
        import torch

        self.loaded = loaded
        device = next(loaded.model.parameters()).device
        encoded = loaded.tokenizer(
            list(texts), return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left"
        )
        self.ids = encoded["input_ids"].to(device)
        self.mask = encoded["attention_mask"].to(device)
        self.cache_argument = _cache_argument(loaded.model)
        with torch.inference_mode():
            out = loaded.model(
                input_ids=self.ids[:, :-1], attention_mask=self.mask[:, :-1], use_cache=True, logits_to_keep=1
            )
        self.cache = out["cache"] if "cache" in out else out["past_key_values"]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def step(self, rows, specs=(), captures=(), stop_after=None):
        """(captured {(site, layer): [R, width] float CPU}, h_final [R, d] float CPU, or None when
        `stop_after` ends the forward earlier). The LM head never runs."""
        import torch

        from ..interventions import Capture, HookSession

        index = rows.to(self.ids.device)
        kwargs = {self.cache_argument: _select_cache(self.cache, index)}
        last = self.loaded.num_layers - 1
        final = Capture("resid_final", last, decode=True)
        if stop_after is None:
            captures, stop_after = [*captures, final], ("resid_final", last)
        with torch.inference_mode(), HookSession(self.loaded, specs, captures, stop_after=stop_after) as session:
            self.loaded.model(
                input_ids=self.ids[index, -1:],
                attention_mask=self.mask[index],
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        captured = {key: values[0] for key, values in session.captured.items()}
        return captured, captured.pop(("resid_final", last), None)


def _length_batches(loaded, texts: list[str], size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `size`, longest first (little padding per batch)."""
    lengths = [len(ids) for ids in loaded.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    return [order[start : start + size] for start in range(0, len(order), size)]


# ============================================================================ stages (model passes)


def read_activations(loaded, texts, emotions, in_group, betas, *, batch_size: int = 16, bar=None) -> dict:
    """Stage 1 (steps 4a, 5, sigma): one prefill per prompt. `emotions` [n] emotion index of each prompt,
    `in_group` [n] bool (row of a complete group). Returns the stage's tensors."""
    import torch

    from ..backends.hf import HFGenerator
    from ..interventions import Capture, HookSession

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
    for indices in _length_batches(loaded, texts, batch_size):
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


def _chunks(jobs: list, per_chunk: int):
    for start in range(0, len(jobs), per_chunk):
        yield jobs[start : start + per_chunk]


def head_importance(
    loaded, texts, emotions, attn_directions, *, space="mlp_input", batch_size=16, max_rows=128, bar=None
):
    """Stage 2 (step 4b), batched: returns (sums [6, L, H] of s - s_masked over each emotion's prompts,
    counts [6]), `s` the projection on the attention direction of the MLP's input (`space="mlp_input"`,
    the authors' reading) or of the raw mid residual (`"residual"`). One decode step carries a clean copy
    and one copy per (layer, head) of a chunk for every prompt of a batch; the forward stops after the
    chunk's deepest layer (before its MLP)."""
    import torch

    from ..interventions import Capture, InterventionSpec

    site = HEAD_SPACES[space]
    n_layers, n_heads, head_dim = loaded.num_layers, loaded.num_heads, loaded.head_dim
    sums, counts = torch.zeros(len(EMOTIONS), n_layers, n_heads), torch.zeros(len(EMOTIONS))
    pairs = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    prompts_per_batch = max(1, min(batch_size, max_rows // (n_heads + 1)))
    generated = frozenset({"generated"})
    for indices in _length_batches(loaded, texts, prompts_per_batch):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b, emo = len(indices), emotions[indices]
        for chunk in _chunks(pairs, max(1, max_rows // b - 1)):
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

    from ..backends.hf import HFGenerator
    from ..interventions import Capture, HookSession, InterventionSpec

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


def sublayer_effects(
    loaded, texts, emotion_sets, inject, sigma, v_ref, alphas, *, batch_size=16, max_rows=128, bar=None
):
    """Stage 3 (step 6a): delta sums [6, A, L, 2] of <h_final, v_ref_e> when alpha sigma_{L,p} inject[e, L, p]
    is added to sublayer (L, p)'s output at the last token, and counts [6]. `texts` are neutral prompts,
    `emotion_sets[i]` the emotions prompt i counts for; inject [6, L, 2, d] unit directions."""
    import torch

    from ..interventions import InterventionSpec

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
    for indices in _length_batches(loaded, texts, max(1, min(batch_size, max_rows // 16))):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b = len(indices)
        jobs = [(i, config) for config in configs for i in range(b) if config[0] in emotion_sets[indices[i]]]
        for chunk in _chunks(jobs, max(1, max_rows - b)):
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
    """Stage 4: ablation / enhancement of the top-k vs k random components. `rankings` and `dmu` map a kind
    to [6, L, n] scores and [6, L, width] difference vectors; `directions` maps "attn"/"mlp" to [6, L, d];
    `layers[(e, kind)]` the layers to probe. The heads' local score is read in `head_space`, the space
    they were ranked in. Returns one record per (emotion, probe)."""
    import torch

    from ..interventions import Capture, InterventionSpec

    head_dim = loaded.head_dim
    site_of = {"neurons": "mlp_neuron", "heads": "attn_head"}
    score_site = {"neurons": ("resid_post", "mlp"), "heads": (HEAD_SPACES[head_space], "attn")}
    order = {kind: torch.argsort(-rankings[kind].double(), dim=-1, stable=True) for kind in KINDS}
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    generated = frozenset({"generated"})
    for indices in _length_batches(loaded, texts, max(1, min(batch_size, max_rows // 16))):
        batch = LastTokenBatch(loaded, [texts[i] for i in indices])
        b = len(indices)
        jobs = []  # (prompt in batch, emotion, probe, component indices)
        for i, index in enumerate(indices):
            e = int(emotions[index])
            generator = torch.Generator().manual_seed(seed * 1_000_003 + int(sample_numbers[index]))
            for probe in validation_probes(e, layers, ks, scales):
                n = rankings[probe.kind].shape[-1]
                if probe.selection == "top":
                    chosen = order[probe.kind][e, probe.layer, : probe.k]
                else:
                    chosen = torch.randperm(n, generator=generator)[: probe.k]
                jobs.append((i, e, probe, chosen))
        for chunk in _chunks(jobs, max(1, max_rows - b)):
            rows = torch.tensor(list(range(b)) + [i for i, _, _, _ in chunk])
            keep: dict[tuple[str, int], object] = {}
            add: dict[tuple[str, int], object] = {}
            used_layers = set()
            for r, (_, e, probe, chosen) in enumerate(chunk, start=b):
                site = site_of[probe.kind]
                key = (site, probe.layer)
                width = dmu[probe.kind].shape[-1]
                channels = (
                    chosen
                    if probe.kind == "neurons"
                    else (chosen[:, None] * head_dim + torch.arange(head_dim)[None]).reshape(-1)
                )
                if probe.mode == "ablate":
                    if key not in keep:
                        keep[key] = torch.ones(len(rows), width)
                    keep[key][r, channels] = 0
                else:
                    if key not in add:
                        add[key] = torch.zeros(len(rows), width)
                    add[key][r, channels] = probe.scale * dmu[probe.kind][e, probe.layer, channels]
                used_layers.add((probe.kind, probe.layer))
            specs = [
                InterventionSpec(site, layer, "scale", v, positions=generated) for (site, layer), v in keep.items()
            ]
            specs += [InterventionSpec(site, layer, "add", v, positions=generated) for (site, layer), v in add.items()]
            captures = sorted(
                {Capture(score_site[kind][0], layer, decode=True) for kind, layer in used_layers},
                key=lambda c: (c.layer, c.site),
            )
            captured, final = batch.step(rows, specs, captures)
            projections = {  # (kind, layer) -> [R, 6] projections on the six emotions' directions
                (kind, layer): (captured[(score_site[kind][0], layer)] @ directions[score_site[kind][1]][:, layer].T)
                for kind, layer in used_layers
            }
            projections = {key: value.tolist() for key, value in projections.items()}
            final_projections = (final @ v_ref.T).tolist()
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
            if bar is not None:
                bar.update(len(chunk))
    records = []
    for (e, probe), (d_local, d_final, n, c_local, c_final) in sorted(
        totals.items(),
        key=lambda item: (
            item[0][0],
            KINDS.index(item[0][1].kind),
            item[0][1].layer,
            item[0][1].mode,
            item[0][1].selection,
            item[0][1].k,
            item[0][1].scale,
        ),
    ):
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


# ============================================================================ the artifact


@dataclass
class Circuit:
    path: Path
    tensors: dict  # neurons, heads (uint8 masks), dmu_mlp, dmu_attn
    metadata: dict

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]

    @property
    def num_layers(self) -> int:
        return self.tensors["heads"].shape[1]

    def results_info(self) -> dict:
        """What a run's results.json records about this circuit (`spec.method.artifact`): how head
        importance was read, the budget rule, and the shares of the model's heads and MLP neurons one
        emotion's circuit selects (from the masks; an artifact from before issue 14 read heads on the
        raw residual under the per-sublayer budget)."""
        config = self.metadata.get("config", {})
        return {
            "head_space": config.get("head_space", "residual"),
            "budget_rule": config.get("budget_rule", "per_sublayer"),
            "shares": selection_shares(self.tensors["neurons"], self.tensors["heads"]),
        }

    def modulation(self, emotion: str, scale: float) -> list[tuple[str, int, object]]:
        """[(site, layer, dense value)] of step 7 for one emotion: `scale * dmu` masked to the selected
        neurons (mlp_neuron) and heads' slices (attn_head); zeros elsewhere, so adding it leaves every
        other channel bit-identical."""
        e = EMOTIONS.index(emotion)
        head_dim = self.metadata["architecture"]["head_dim"]
        result = []
        for layer in range(self.num_layers):
            neurons = self.tensors["neurons"][e, layer].bool()
            if bool(neurons.any()):
                result.append(("mlp_neuron", layer, scale * self.tensors["dmu_mlp"][e, layer] * neurons))
            heads = self.tensors["heads"][e, layer].bool()
            if bool(heads.any()):
                channels = heads.repeat_interleave(head_dim)
                result.append(("attn_head", layer, scale * self.tensors["dmu_attn"][e, layer] * channels))
        return result


def load_circuit(path: str | Path) -> Circuit:
    tensors, metadata = read_artifact(path, ARTIFACT_FORMAT, "circuit.safetensors", "sev-bench discover circuit")
    return Circuit(Path(path), tensors, metadata)


def check_circuit(circuit: Circuit, loaded, dataset_sha256: dict, scorer) -> None:
    """Refuse (one line) a circuit made for another model, dataset version or acceptance scorer."""
    from .directions import check_model

    meta = circuit.metadata
    check_model(meta, loaded, circuit.path, what="circuit")
    if meta["dataset_sha256"] != dataset_sha256:
        made = meta["dataset_sha256"].get("train", "?")[:12]
        given = dataset_sha256.get("train", "?")[:12]
        raise UserError(
            f"the circuit in {circuit.path} was made from another SEV version (train sha256 {made}…, this one "
            f"{given}…); rediscover it"
        )
    made_with = meta.get("scorer_sha256")
    if meta["config"]["accept"] == "scorer":
        given = getattr(scorer, "sha256", None)
        if given != made_with:
            made_id = (meta.get("scorer") or {}).get("id", "?")
            raise UserError(
                f"the circuit in {circuit.path} kept the train replies scorer {made_id} (sha256 {made_with[:12]}…) "
                f"accepted, not this run's scorer {getattr(scorer, 'id', '?')} (sha256 {str(given)[:12]}…); "
                "rediscover it with this scorer"
            )


def circuit_key(loaded, dataset_sha256, scorer_sha256, directions_sha256, config: CircuitConfig, dtype: str) -> dict:
    """The circuit's identity: what the analysis stages depend on (`analysis_key`: hashed into the default
    folder name and the stages' cache digest), plus the integration settings (`integration`: budget rule,
    quotas, caps), which only the cheap last step depends on."""
    key = {
        "format": ARTIFACT_FORMAT,
        "model": model_signature(loaded),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "dtype_requested": dtype,
        "dataset_sha256": dataset_sha256,
        "scorer_sha256": scorer_sha256 if config.accept == "scorer" else None,
        "directions_sha256": directions_sha256,
        "config": config.analysis(),
        "integration": config.integration(),
    }
    return json.loads(json.dumps(key))  # as it reads back from key.json / metadata.json (lists, not tuples)


def analysis_key(key: dict) -> dict:
    """The part of a circuit key the analysis stages depend on (all but the integration settings)."""
    return {k: v for k, v in key.items() if k != "integration"}


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def default_circuit_dir(key: dict) -> Path:
    """The cache folder of the analysis behind `key` (circuits that differ only in their integration
    settings share it: the stages are reused, the artifact is rewritten)."""
    name = slug(Path(key["model"]["id"]).name, limit=40)
    return cache_dir() / "circuits" / f"{name}_{_key_digest(analysis_key(key))[:12]}"


# ============================================================================ stage cache


def _stage_paths(out: Path, name: str) -> tuple[Path, Path]:
    return out / "stages" / f"{name}.safetensors", out / "stages" / f"{name}.json"


def _load_stage(out: Path, name: str, digest: str):
    """(tensors, info) of a finished stage made from the same inputs, else None."""
    from safetensors.torch import load_file

    tensor_path, info_path = _stage_paths(out, name)
    if not info_path.is_file() or not tensor_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("key_sha256") != digest or info.get("tensors_sha256") != file_sha256(tensor_path):
        return None
    return load_file(str(tensor_path)), info


def _save_stage(out: Path, name: str, digest: str, tensors: dict, info: dict) -> None:
    from safetensors.torch import save_file

    tensor_path, info_path = _stage_paths(out, name)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    staging = tensor_path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging))
    staging.replace(tensor_path)
    write_json_atomic(info_path, {**info, "key_sha256": digest, "tensors_sha256": file_sha256(tensor_path)})


# ============================================================================ discovery


@dataclass
class _Inputs:
    rows: list  # accepted rows
    emotions: object  # LongTensor [n]
    numbers: object  # LongTensor [n]: position in the (limited) train rows (seeds the random controls)
    in_group: object  # BoolTensor [n]
    groups: int
    groups_by_valence: dict = field(default_factory=dict)
    emotion_texts: list = field(default_factory=list)
    neutral_texts: list = field(default_factory=list)
    neutral_emotions: list = field(default_factory=list)  # per neutral prompt: emotion indices it counts for


def _inputs(loaded, rows, accepted, config: CircuitConfig) -> _Inputs:
    import torch

    from ..backends.hf import render_prompt

    groups = _complete_groups(rows, accepted)
    group_ids = {row["id"] for _, members in groups for row in members}
    numbered = [(n, row) for n, row in enumerate(rows) if accepted.get(row["id"])]
    chosen = [row for _, row in numbered]
    inputs = _Inputs(
        rows=chosen,
        emotions=torch.tensor([EMOTIONS.index(r["target_emotion"]) for r in chosen], dtype=torch.long),
        numbers=torch.tensor([n for n, _ in numbered], dtype=torch.long),
        in_group=torch.tensor([r["id"] in group_ids for r in chosen], dtype=torch.bool),
        groups=len(groups),
        groups_by_valence={v: sum(1 for (_, valence), _ in groups if valence == v) for v in VALENCES},
    )
    tokenizer = loaded.tokenizer
    for row in chosen:
        system = config.emotion_system_template.format(emotion=row["target_emotion"])
        inputs.emotion_texts.append(render_prompt(tokenizer, prompts.chat(system, row["scenario"], row["event"])))
    by_chat: dict[tuple[str, str], int] = {}
    for row in chosen:
        key = (row["skeleton_id"], row["valence"])
        if key not in by_chat:
            by_chat[key] = len(inputs.neutral_texts)
            chat = prompts.chat(config.neutral_system, row["scenario"], row["event"])
            inputs.neutral_texts.append(render_prompt(tokenizer, chat))
            inputs.neutral_emotions.append([])
        inputs.neutral_emotions[by_chat[key]].append(EMOTIONS.index(row["target_emotion"]))
    return inputs


def _accepted_rows(directions, rows, config: CircuitConfig) -> dict[str, bool]:
    if config.accept == "all":
        return {row["id"]: True for row in rows}
    path = directions.path / "elicitation.jsonl"
    if not path.is_file():
        raise UserError(f"{directions.path} has no elicitation.jsonl; rediscover the directions with accept=scorer")
    accepted = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        accepted[record["id"]] = bool(record["accepted"])
    return accepted


def discover_circuit(
    loaded,
    *,
    config: CircuitConfig,
    dataset_sha256: dict,
    train_rows: list[dict],
    directions,
    directions_timings: dict | None = None,
    scorer=None,
    output_dir: str | Path | None = None,
    dtype: str = "auto",
    batch_size: int = 16,
    max_rows: int = 128,
    progress: bool = True,
    log=print,
    report: bool = True,
) -> tuple[Circuit, bool]:
    """The circuit for `loaded`: reused when the output dir (default: the cache folder for these inputs)
    holds one made from the same inputs and settings; else the missing stages are computed there.
    `report=False` skips report.md and the figures. Returns (circuit, reused)."""
    import torch

    if config.accept == "scorer" and scorer is None:
        raise ValueError("accept='scorer' needs a scorer")
    if max_rows < 2:
        raise UserError("--rows-per-pass must be >= 2")
    scorer_sha256 = scorer.sha256 if scorer is not None else None
    key = circuit_key(loaded, dataset_sha256, scorer_sha256, directions.sha256, config, dtype)
    analysis = analysis_key(key)
    digest = _key_digest(analysis)  # the stages depend on the analysis settings only
    out = Path(output_dir) if output_dir else default_circuit_dir(key)
    meta_path = out / "metadata.json"
    existing = None
    if meta_path.is_file():
        try:
            existing = load_circuit(out)
        except UserError as exc:  # a damaged artifact: redo what is missing (the stages are checked one by one)
            log(f"{exc}; rebuilding it")
    if existing is not None:
        made = existing.metadata.get("key") or {}
        if made == key and existing.metadata.get("integration") == config.integration():
            log(f"reusing the circuit in {out} (same model, data, scorer, directions and settings)")
            return existing, True
        if analysis_key(made) != analysis and output_dir:
            raise UserError(f"{out} holds a circuit made from other inputs; choose another --output-dir")
    key_path = out / "key.json"
    if key_path.is_file() and analysis_key(json.loads(key_path.read_text(encoding="utf-8"))) != analysis:
        if output_dir:
            raise UserError(f"{out} holds circuit stages made from other inputs; choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key_path, key)

    rows = train_rows[: config.limit] if config.limit else list(train_rows)
    accepted = _accepted_rows(directions, rows, config)
    inputs = _inputs(loaded, rows, accepted, config)
    if inputs.groups < MIN_GROUPS:
        raise UserError(
            f"only {inputs.groups} complete (skeleton, valence) groups among the accepted rows; at least "
            f"{MIN_GROUPS} are needed (drop --limit, or accept=all)"
        )
    n_layers = loaded.num_layers
    dirs = {p: directions.tensors[p].float() for p in ("attn", "mlp")}
    timings: dict[str, dict] = {}
    if directions_timings is not None:
        timings["directions"] = directions_timings

    def stage(name: str, desc: str, total: int, unit: str, compute):
        found = _load_stage(out, name, digest)
        if found is not None:
            tensors, info = found
            timings[name] = {"seconds": info["seconds"], "reused": True}
            log(f"stage {name}: reusing {out / 'stages' / (name + '.safetensors')}")
            return tensors, info
        log(f"stage {name}: {desc}")
        bar = _progress(total, name, unit, progress)
        started = time.perf_counter()
        try:
            tensors, info = compute(bar)
        finally:
            if bar is not None:
                bar.close()
        seconds = round(time.perf_counter() - started, 2)
        info = {**info, "seconds": seconds}
        _save_stage(out, name, digest, tensors, info)
        timings[name] = {"seconds": seconds, "reused": False}
        return tensors, info

    n = len(inputs.rows)
    betas = down_proj_betas(loaded, dirs["mlp"])

    def activations(bar):
        result = read_activations(
            loaded, inputs.emotion_texts, inputs.emotions, inputs.in_group, betas, batch_size=batch_size, bar=bar
        )
        return result, {"rows": n, "groups": inputs.groups}

    acts, _ = stage(
        "activations",
        f"neurons, difference vectors and sigma from {n} emotion-instructed prompts",
        n,
        "prompt",
        activations,
    )

    def heads(bar):
        sums, counts = head_importance(
            loaded,
            inputs.emotion_texts,
            inputs.emotions,
            dirs["attn"],
            space=config.head_space,
            batch_size=batch_size,
            max_rows=max_rows,
            bar=bar,
        )
        return {"head_importance": sums / counts.clamp_min(1)[:, None, None], "rows_per_emotion": counts}, {
            "head_space": config.head_space
        }

    heads_total = n * n_layers * loaded.num_heads
    head_tensors, _ = stage(
        "heads",
        f"{n_layers * loaded.num_heads} heads x {n} prompts, batched copies of the last token "
        f"(read in the {config.head_space} space)",
        heads_total,
        "copy",
        heads,
    )

    ref_layers = reference_layers(n_layers)
    v_ref = torch.stack(
        [
            reference_direction(torch.cat([dirs["attn"][e, ref_layers], dirs["mlp"][e, ref_layers]]))
            for e in range(len(EMOTIONS))
        ]
    )
    inject = torch.stack([aligned_to(dirs["attn"], v_ref[:, None]), aligned_to(dirs["mlp"], v_ref[:, None])], dim=2)

    def sublayers(bar):
        sums, counts = sublayer_effects(
            loaded,
            inputs.neutral_texts,
            inputs.neutral_emotions,
            inject,
            acts["sigma"],
            v_ref,
            config.alphas,
            batch_size=batch_size,
            max_rows=max_rows,
            bar=bar,
        )
        raw = sublayer_importance(sums, counts, config.alphas, acts["sigma"])
        per_alpha = sums / counts.clamp_min(1)[:, None, None, None]
        return {
            "importance_raw": raw,
            "importance": normalise_importance(raw),
            "delta_per_alpha": per_alpha,
            "v_ref": v_ref,
            "prompts_per_emotion": counts,
        }, {"reference_layers": ref_layers}

    sub_total = sum(len(s) for s in inputs.neutral_emotions) * len(config.alphas) * n_layers * 2
    sub_tensors, _ = stage(
        "sublayers",
        f"{2 * n_layers} sublayers x {len(config.alphas)} alphas on {len(inputs.neutral_texts)} neutral prompts",
        sub_total,
        "copy",
        sublayers,
    )

    probe_layers = validation_layers(config.validation_layers, sub_tensors["importance_raw"], n_layers)
    ks = {
        "neurons": [k for k in config.validation_k if k <= loaded.model.config.intermediate_size],
        "heads": [k for k in config.validation_k if k <= loaded.num_heads],
    }

    def validation(bar):
        records = validate_components(
            loaded,
            inputs.emotion_texts,
            inputs.emotions,
            inputs.numbers,
            {"neurons": acts["contrib_mean"], "heads": head_tensors["head_importance"]},
            {"neurons": acts["dmu_mlp"], "heads": acts["dmu_attn"]},
            dirs,
            v_ref,
            probe_layers,
            ks=ks,
            scales=config.validation_scales,
            head_space=config.head_space,
            seed=config.seed,
            batch_size=batch_size,
            max_rows=max_rows,
            bar=bar,
        )
        return {"done": torch.ones(1)}, {"records": records}

    probes_total = sum(
        len(validation_probes(int(e), probe_layers, ks, config.validation_scales)) for e in inputs.emotions
    )
    _, validation_info = stage(
        "validation", "top-k vs random ablation and enhancement", probes_total, "copy", validation
    )
    records = validation_info["records"]

    # integration (step 6b) and the artifact
    started = time.perf_counter()
    if meta_path.is_file():
        meta_path.unlink()  # the old artifact is replaced: never leave metadata that describes other tensors
    neuron_masks, head_masks, counts = integrate(
        sub_tensors["importance"], acts["contrib_mean"], head_tensors["head_importance"], config, loaded.num_heads, log
    )
    tensors = {
        "neurons": neuron_masks.to(torch.uint8),
        "heads": head_masks.to(torch.uint8),
        "dmu_mlp": acts["dmu_mlp"].float(),
        "dmu_attn": acts["dmu_attn"].float(),
    }
    from safetensors.torch import save_file

    tensor_path = out / "circuit.safetensors"
    staging = out / "circuit.safetensors.partial"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging), metadata={"format": ARTIFACT_FORMAT})
    staging.replace(tensor_path)
    selected = {
        emotion: {
            "neurons": {
                str(layer): torch.nonzero(neuron_masks[e, layer]).flatten().tolist()
                for layer in range(n_layers)
                if bool(neuron_masks[e, layer].any())
            },
            "heads": {
                str(layer): torch.nonzero(head_masks[e, layer]).flatten().tolist()
                for layer in range(n_layers)
                if bool(head_masks[e, layer].any())
            },
        }
        for e, emotion in enumerate(EMOTIONS)
    }
    write_json_atomic(out / "circuit.json", selected)
    _write_validation_csv(out / "validation.csv", records)
    d_ff = loaded.model.config.intermediate_size
    k_mlp, k_attn = circuit_budget(config, n_layers, loaded.num_heads, d_ff)
    jaccard = {"heads": jaccard_matrix(head_masks), "neurons": jaccard_matrix(neuron_masks)}
    timings["integration"] = {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    metadata = {
        "format": ARTIFACT_FORMAT,
        "key": key,
        "model": key["model"],
        "dataset_sha256": dataset_sha256,
        "scorer": scorer.info() if scorer is not None and config.accept == "scorer" else None,
        "scorer_sha256": key["scorer_sha256"],
        "directions": {"path": shown_path(directions.path), "sha256": directions.sha256},
        "config": asdict(config),
        "integration": config.integration(),
        "emotions": list(EMOTIONS),
        "architecture": {
            "num_layers": n_layers,
            "num_heads": loaded.num_heads,
            "head_dim": loaded.head_dim,
            "intermediate_size": loaded.model.config.intermediate_size,
        },
        "train_rows": len(rows),
        "accepted_rows": n,
        "rows_per_emotion": {e: int(c) for e, c in zip(EMOTIONS, acts["rows_per_emotion"].tolist())},
        "groups": inputs.groups,
        "groups_by_valence": inputs.groups_by_valence,
        "neutral_prompts": len(inputs.neutral_texts),
        "reference_layers": ref_layers,
        "validation_layers": {f"{EMOTIONS[e]}/{kind}": layers for (e, kind), layers in probe_layers.items()},
        "head_space": config.head_space,
        "budget": {
            "rule": config.budget_rule,
            "neurons": k_mlp,
            "heads": k_attn,
            "total": k_mlp + k_attn,
            "selected": {kind: sum(counts[EMOTIONS[0]][kind]) for kind in KINDS},  # less where the caps bind
            # per emotion: selected / all the model has (heads: layers x heads, neurons: layers x d_ff)
            "shares": selection_shares(neuron_masks, head_masks),
            "paper_shares": PAPER_SHARES,
        },
        "counts_per_layer": counts,
        "jaccard": {
            kind: {"matrix": m.tolist(), "mean": mean_pairwise(m)[0], "std": mean_pairwise(m)[1]}
            for kind, m in jaccard.items()
        },
        "tensors_sha256": file_sha256(tensor_path),
        "sev_bench_version": __version__,
        "timings": timings,
    }
    circuit = Circuit(out, tensors, metadata)
    if report:
        started = time.perf_counter()
        from .circuit_report import write_circuit_report

        write_circuit_report(circuit, acts, head_tensors, sub_tensors, records, out)
        timings["report"] = {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    elif (out / "report.md").is_file():
        (out / "report.md").unlink()  # it described the circuit this one replaces
    write_json_atomic(meta_path, seal(metadata))  # last: marks the artifact complete
    return circuit, False


def _progress(total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def _write_validation_csv(path: Path, records: list[dict]) -> None:
    import io

    columns = [
        "emotion",
        "kind",
        "layer",
        "mode",
        "selection",
        "k",
        "scale",
        "n",
        "delta_local",
        "delta_final",
        "clean_local",
        "clean_final",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
    write_text_atomic(path, buffer.getvalue())


def obtain_circuit(
    context, config: CircuitConfig, output_dir=None, max_rows: int = 128, announce: bool = True
) -> tuple[Circuit, bool]:
    """The cached circuit for this model and these inputs, discovered first (directions included) when
    there is none (said on the log when `announce`). Returns (circuit, reused)."""
    from ..data import dataset_fingerprint, load_sev, select_rows
    from .directions import obtain_directions

    fingerprint = dataset_fingerprint(context.data_dir)
    scorer = context.scorer if config.accept == "scorer" else None
    started = time.perf_counter()
    directions, reused = obtain_directions(context, config.accept, config.limit)
    directions_timings = (
        {"seconds": round(sum(directions.metadata.get("timings", {}).values()), 2), "reused": True}
        if reused
        else {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    )
    if output_dir is None and announce:
        key = circuit_key(
            context.loaded,
            fingerprint,
            scorer.sha256 if scorer is not None else None,
            directions.sha256,
            config,
            context.dtype,
        )
        target = default_circuit_dir(key)
        if not (target / "metadata.json").is_file():
            context.log(
                f"no emotion circuit cached for {context.loaded.model_id} with these settings; discovering it "
                f"first (the same as `sev-bench discover circuit --accept {config.accept}"
                + (f" --limit {config.limit}" if config.limit else "")
                + f"`) into {target}"
            )
    train = select_rows(load_sev(context.data_dir)["train"], list(EMOTIONS), list(VALENCES), None)
    return discover_circuit(
        context.loaded,
        config=config,
        dataset_sha256=fingerprint,
        train_rows=train,
        directions=directions,
        directions_timings=directions_timings,
        scorer=scorer,
        output_dir=output_dir,
        dtype=context.dtype,
        batch_size=context.batch_size,
        max_rows=max_rows,
        progress=context.progress,
        log=context.log,
    )


def discover_for_model(
    model: str,
    *,
    config: CircuitConfig,
    output_dir: str | None = None,
    scorer_name: str = DEFAULT_SCORER,
    scorer_options: dict | None = None,
    data_dir: str | None = None,
    batch_size: int = 16,
    max_rows: int = 128,
    dtype: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Circuit, bool]:
    """`sev-bench discover circuit`: load the model (and the scorer for accept=scorer), then reuse or
    compute the circuit. Returns (circuit, reused)."""
    from ..methods.base import PrepareContext
    from ..models import load_model

    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if threads is not None:
        if threads < 1:
            raise UserError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    scorer = None
    if config.accept == "scorer":
        from ..scoring import load_scorer

        scorer = load_scorer(scorer_name, data_dir=data_dir, options=scorer_options)
    loaded = load_model(model, dtype=dtype, device=device)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    context = PrepareContext(loaded, scorer, data_dir, dtype, batch_size, progress, log=log)
    return obtain_circuit(context, config, output_dir=output_dir, max_rows=max_rows, announce=False)
