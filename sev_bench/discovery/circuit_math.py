"""The circuit discovery's formulas, as pure functions on tensors (tested on planted data): neuron
contributions, difference vectors, the reference direction v_ref, sublayer importance, and the masks and
overlaps of the selected components. torch is imported inside each function (a heavy import the CLI
should not pay at start-up)."""

from __future__ import annotations

# v_ref: the protocol's layers 21-25 of Llama-3.2-3B's 28, as a fraction of depth.
REFERENCE_LAYERS = (21 / 28, 5 / 28)  # first layer, number of layers


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



def reference_directions(attn, mlp, layers: list[int]):
    """v_ref [6, d]: per emotion, `reference_direction` of its attention and MLP directions ([6, L, d]) in
    `layers`."""
    import torch

    return torch.stack(
        [reference_direction(torch.cat([attn[e, layers], mlp[e, layers]])) for e in range(attn.shape[0])]
    )
