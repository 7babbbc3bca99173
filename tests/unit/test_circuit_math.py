"""The circuit discovery's pure functions on planted tensors (no model, fast): difference vectors, the
reference direction, sublayer importance, the budget and its allocation, masks and overlaps, the
validation plan, the artifact's indices and CSV, and the shared artifact helpers (keys, cache folders,
the stage cache)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from sev_bench.discovery.artifacts import (
    cached_artifact_dir,
    complete_groups,
    key_digest,
    load_stage,
    save_stage,
)
from sev_bench.discovery.circuit_artifact import selected_indices, write_validation_csv
from sev_bench.discovery.circuit_config import CircuitConfig
from sev_bench.discovery.circuit_math import (
    aligned_to,
    difference_vectors,
    difference_vectors_from_sums,
    jaccard_matrix,
    mean_pairwise,
    normalise_importance,
    reference_direction,
    reference_directions,
    reference_layers,
    sublayer_importance,
    top_mask,
)
from sev_bench.discovery.stages.integration import (
    PAPER_SHARES,
    allocate,
    circuit_budget,
    integrate,
    layer_caps,
    paper_share_budget,
    selection_shares,
    split_budget,
)
from sev_bench.discovery.stages.sublayers import injection_directions
from sev_bench.discovery.stages.validation import validation_layers, validation_probes
from sev_bench.errors import UserError
from sev_bench.paths import cache_dir
from sev_bench.prompts import EMOTIONS

# The protocol's worked example (step 6b): anger's heads per layer on Llama-3.2-3B.
PROTOCOL_ANGER_HEADS = [2] * 10 + [3, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 11, 12, 12, 11, 11, 10, 9]


# ----------------------------------------------------------------------------- pure math on planted data


def test_difference_vectors_recover_a_planted_contrast():
    generator = torch.Generator().manual_seed(0)
    groups, layers, width = 30, 3, 12
    emotion_part = torch.randn(6, layers, width, generator=generator)
    states = 40 * torch.randn(groups, 1, layers, width, generator=generator) + emotion_part[None]
    expected = emotion_part - emotion_part.mean(0, keepdim=True)  # not normalised
    torch.testing.assert_close(difference_vectors(states), expected, rtol=1e-4, atol=1e-4)
    # The streaming form (per-emotion sums over the rows of complete groups) gives the same.
    sums, counts = states.sum(0), torch.full((6,), float(groups))
    torch.testing.assert_close(difference_vectors_from_sums(sums, counts), difference_vectors(states))
    with pytest.raises(ValueError, match="same non-zero number"):
        difference_vectors_from_sums(sums, torch.tensor([30.0, 30, 30, 30, 30, 29]))


def test_reference_direction_aligns_signs_and_renormalises():
    base = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(1)), dim=0)
    noise = 0.05 * torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    vectors = torch.nn.functional.normalize(base + noise, dim=-1) * torch.tensor([1.0, -1, 1, -1, -1, 1])[:, None]
    reference = reference_direction(vectors)
    assert float(reference.norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(reference @ base) > 0.99
    flipped = aligned_to(vectors, reference)
    assert bool(((flipped @ reference) > 0).all())
    assert reference_layers(28) == [21, 22, 23, 24, 25]  # the protocol's layers on its 28-layer model
    assert reference_layers(30) == [22, 23, 24, 25, 26] and reference_layers(4) == [3]


def test_sublayer_importance_formula():
    """delta = alpha * sigma * I_true (a linear response): the formula must give I_true back, for any alpha."""
    generator = torch.Generator().manual_seed(3)
    true = torch.rand(6, 5, 2, generator=generator)
    sigma = 0.1 + torch.rand(5, 2, generator=generator)
    alphas = (0.1, 0.3, 0.5, 0.7)
    counts = torch.tensor([4.0, 3, 5, 4, 2, 6])
    delta_sums = torch.stack([a * sigma[None] * true for a in alphas], dim=1) * counts[:, None, None, None]
    raw = sublayer_importance(delta_sums, counts, alphas, sigma)
    torch.testing.assert_close(raw, true)
    normalised = normalise_importance(raw)
    torch.testing.assert_close(normalised.sum(dim=(1, 2)), torch.ones(6))


def test_allocation_respects_budget_quotas_and_caps_exactly():
    rng = random.Random(0)
    for _ in range(300):
        layers = rng.randint(1, 40)
        available = rng.choice([rng.randint(1, 32), [rng.randint(1, 32) for _ in range(layers)]])
        total = rng.randint(1, 600)
        minimum, cap_fraction = rng.randint(0, 6), rng.choice([0.2, 0.4, 0.7, 1.0])
        importance = [rng.choice([0.0, -rng.random(), rng.random(), 10 * rng.random()]) for _ in range(layers)]
        caps = layer_caps(layers, total, cap_fraction, available)
        if sum(min(minimum, c) for c in caps) > min(total, sum(caps)):
            with pytest.raises(UserError, match="minimum quotas"):
                allocate(importance, total, minimum, cap_fraction, available)
            continue
        counts = allocate(importance, total, minimum, cap_fraction, available)
        assert sum(counts) == min(total, sum(caps))  # the budget exactly (or every slot the caps allow)
        assert all(min(minimum, cap) <= n <= cap for n, cap in zip(counts, caps))
        assert caps == [
            min(int(cap_fraction * total + 1e-9), a)
            for a in (available if isinstance(available, list) else [available] * layers)
        ]


def test_allocation_reproduces_the_protocols_worked_example():
    """Llama-3.2-3B: 28 layers, 24 heads, d_ff 8192, budget 10 x 56 = 560 -> 392 neurons + 168 heads;
    minimum 2 heads / 4 neurons per layer; caps 0.4 x K_kind = 67 heads / 156 neurons."""
    assert split_budget(28, 10, 0.7) == (392, 168)
    assert layer_caps(28, 168, 0.4, 24) == [24] * 28 and layer_caps(28, 392, 0.4, 8192) == [156] * 28
    # Importances proportional to the heads above the quota lead to exactly the listed counts.
    importance = [count - 2 for count in PROTOCOL_ANGER_HEADS]
    assert allocate(importance, 168, 2, 0.4, 24) == PROTOCOL_ANGER_HEADS
    # Scaling the importances changes nothing (the allocation is proportional).
    assert allocate([3.7 * x for x in importance], 168, 2, 0.4, 24) == PROTOCOL_ANGER_HEADS
    # A peaked neuron importance hits the 156 cap and the excess is backfilled.
    peaked = [0.0] * 20 + [100.0, 1, 1, 1, 1, 1, 1, 1]
    neurons = allocate(peaked, 392, 4, 0.4, 8192)
    assert sum(neurons) == 392 and max(neurons) == 156 and min(neurons) == 4 and neurons[20] == 156
    # Few heads: caps bind at the heads a layer has.
    heads = allocate([0.0] * 26 + [5.0] * 2, 168, 2, 0.4, 24)
    assert sum(heads) == 168 and heads[26:] == [24, 24] and set(heads[:26]) == {4, 5}  # 64 backfilled evenly


# (layers, heads per layer, MLP width) of the models the budget is checked on.
SMOLLM2_135M, QWEN25_15B, LLAMA32_3B = (30, 9, 1536), (28, 12, 8960), (28, 24, 8192)


def test_paper_share_budget_keeps_the_papers_sparsity_on_real_dimensions():
    """The default budget keeps the shares the paper's 560 = 392 + 168 selects on Llama-3.2-3B-Instruct
    (672 heads, 28 x 8192 = 229,376 MLP neurons): 25% of the heads, 0.171% of the neurons."""
    assert PAPER_SHARES["heads"] == {"selected": 168, "total": 672, "percent": 25.0}
    assert PAPER_SHARES["neurons"] == {"selected": 392, "total": 229_376, "percent": 0.1709}
    # The paper's model: exactly its budget, the same as the per-sublayer rule there.
    assert paper_share_budget(*LLAMA32_3B, min_neurons=4, min_heads=2) == (392, 168) == split_budget(28, 10, 0.7)
    assert circuit_budget(CircuitConfig(), *LLAMA32_3B) == (392, 168)
    # SmolLM2-135M: 25% of 270 heads = 67.5 -> 68 (half up); 7/4096 of 46,080 neurons = 78.75 -> 79, raised to
    # the 4 x 30 = 120 the per-layer minimum takes. The per-sublayer rule took 180 heads (67%) and 420 neurons.
    assert paper_share_budget(*SMOLLM2_135M) == (79, 68)
    assert circuit_budget(CircuitConfig(), *SMOLLM2_135M) == (120, 68)
    assert circuit_budget(CircuitConfig(budget_rule="per_sublayer"), *SMOLLM2_135M) == (420, 180)
    # Qwen2.5-1.5B: 84 of 336 heads (25%), 428.75 -> 429 of 250,880 neurons (0.171%); the old rule: 168 heads.
    assert circuit_budget(CircuitConfig(), *QWEN25_15B) == (429, 84)
    assert circuit_budget(CircuitConfig(budget_rule="per_sublayer"), *QWEN25_15B) == (392, 168)
    # Minimums bind on a small model: 2 of 4 heads per layer is already half the heads.
    assert circuit_budget(CircuitConfig(), 4, 4, 128) == (16, 8)

    # Integrated (step 6b) on SmolLM2's shapes, the masks select exactly those shares for every emotion.
    generator = torch.Generator().manual_seed(4)
    layers, heads, d_ff = SMOLLM2_135M
    importance = torch.rand(6, layers, 2, generator=generator)
    neurons, selected_heads, counts = integrate(
        importance,
        torch.randn(6, layers, d_ff, generator=generator),
        torch.randn(6, layers, heads, generator=generator),
        CircuitConfig(),
        heads,
        log=lambda message: None,
    )
    shares = selection_shares(neurons, selected_heads)
    assert shares == {
        "heads": {"selected": 68, "total": 270, "percent": 25.1852},
        "neurons": {"selected": 120, "total": 46_080, "percent": 0.2604},
    }
    assert all(counts[e]["neurons"] == [4] * layers for e in EMOTIONS)  # the minimum is the whole budget
    assert all(sum(counts[e]["heads"]) == 68 and min(counts[e]["heads"]) >= 2 for e in EMOTIONS)


def test_top_mask_and_jaccard():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [1.0, -1.0, 0.0, 2.0]])
    mask = top_mask(scores, [2, 1])
    assert mask.tolist() == [[False, True, False, True], [False, False, False, True]]
    masks = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    matrix = jaccard_matrix(masks)
    assert matrix[0, 1] == pytest.approx(1 / 3) and matrix[0, 2] == 1 and matrix[1, 1] == 1




def test_reference_directions_and_injection_directions_on_planted_directions():
    """v_ref per emotion is the sign-aligned mean of its attention and MLP directions in the reference layers;
    the injected directions are every layer's directions flipped to agree with it."""
    generator = torch.Generator().manual_seed(6)
    base = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    noise = 0.02 * torch.randn(2, 6, 8, 16, generator=generator)
    signs = torch.where(torch.rand(2, 6, 8, 1, generator=generator) < 0.5, -1.0, 1.0)
    attn, mlp = (torch.nn.functional.normalize(base[:, None] + noise[p], dim=-1) * signs[p] for p in range(2))
    layers = reference_layers(8)
    v_ref = reference_directions(attn, mlp, layers)
    assert v_ref.shape == (6, 16)
    torch.testing.assert_close(v_ref.norm(dim=-1), torch.ones(6))
    for e in range(6):
        torch.testing.assert_close(v_ref[e], reference_direction(torch.cat([attn[e, layers], mlp[e, layers]])))
        assert abs(float(v_ref[e] @ base[e])) > 0.99
    inject = injection_directions({"attn": attn, "mlp": mlp}, v_ref)
    assert inject.shape == (6, 8, 2, 16)
    assert bool(((inject * v_ref[:, None, None]).sum(-1) > 0).all())  # every one agrees with v_ref
    torch.testing.assert_close(inject.abs(), torch.stack([attn, mlp], dim=2).abs())  # only signs change


def test_validation_plan_probes_and_layers():
    importance_raw = torch.zeros(6, 5, 2)
    importance_raw[:, 3, 0] = 1.0  # attention peaks at layer 3 (heads)
    importance_raw[:, 1, 1] = 1.0  # MLP peaks at layer 1 (neurons)
    auto = validation_layers("auto", importance_raw, 5)
    assert auto[(0, "heads")] == [3] and auto[(5, "neurons")] == [1] and len(auto) == 12
    given = validation_layers("2, 0", importance_raw, 5)
    assert all(layers == [0, 2] for layers in given.values())
    with pytest.raises(UserError, match="layers 0..4"):
        validation_layers("5", importance_raw, 5)
    with pytest.raises(UserError, match="comma list"):
        validation_layers("top", importance_raw, 5)
    probes = validation_probes(0, auto, {"neurons": [1, 2], "heads": [1]}, (0.5, 1.0))
    # per kind and k: ablation top/random + 2 scales x enhancement top/random = 6 probes
    assert len(probes) == 6 * 3
    assert {(p.kind, p.layer) for p in probes} == {("neurons", 1), ("heads", 3)}
    assert {p.scale for p in probes if p.mode == "ablate"} == {0.0}


def test_selected_indices_and_validation_csv(tmp_path):
    neurons = torch.zeros(6, 3, 5, dtype=torch.bool)
    neurons[0, 0, [1, 4]] = True
    neurons[0, 2, 0] = True
    heads = torch.zeros(6, 3, 2, dtype=torch.bool)
    heads[2, 1, 1] = True
    selected = selected_indices(neurons, heads)
    assert list(selected) == list(EMOTIONS)
    assert selected[EMOTIONS[0]] == {"neurons": {"0": [1, 4], "2": [0]}, "heads": {}}
    assert selected[EMOTIONS[2]] == {"neurons": {}, "heads": {"1": [1]}}
    record = {"emotion": "anger", "kind": "heads", "layer": 1, "mode": "ablate", "selection": "top", "k": 2}
    record |= {"scale": 0.0, "n": 3, "delta_local": -0.123456789, "delta_final": 1e-9}
    record |= {"clean_local": 2.0, "clean_final": 12345678.9}
    write_validation_csv(tmp_path / "validation.csv", [record])
    header, row = (tmp_path / "validation.csv").read_text().splitlines()
    assert header == "emotion,kind,layer,mode,selection,k,scale,n,delta_local,delta_final,clean_local,clean_final"
    assert row == "anger,heads,1,ablate,top,2,0,3,-0.123457,1e-09,2,1.23457e+07"


def test_mean_pairwise_of_the_upper_triangle():
    matrix = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    mean, std = mean_pairwise(matrix)
    assert mean == pytest.approx(0.4) and std == pytest.approx(float(torch.tensor([0.2, 0.4, 0.6]).std(unbiased=False)))


# ----------------------------------------------------------------------------- shared artifact helpers


def test_key_digest_and_cache_folder_names():
    key = {"model": {"id": "org/Some Model"}, "b": [1, 2], "a": None}
    digest = key_digest(key)
    assert digest == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    assert key_digest(dict(reversed(list(key.items())))) == digest  # key order does not matter
    folder = cached_artifact_dir("circuits", key["model"]["id"], digest)
    assert folder.parent == cache_dir() / "circuits" and folder.name.endswith("_" + digest[:12])
    assert "/" not in folder.name and folder.name.startswith("Some")


def test_stage_cache_round_trip_and_refusals(tmp_path):
    tensors = {"x": torch.arange(6.0).reshape(2, 3), "n": torch.tensor([1, 2])}
    save_stage(tmp_path, "heads", "d" * 64, tensors, {"head_space": "mlp_input", "seconds": 1.5})
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["heads.json", "heads.safetensors"]
    loaded, info = load_stage(tmp_path, "heads", "d" * 64)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())
    assert info["head_space"] == "mlp_input" and info["seconds"] == 1.5 and info["key_sha256"] == "d" * 64
    assert list(info) == ["head_space", "seconds", "key_sha256", "tensors_sha256"]  # the file's layout
    assert load_stage(tmp_path, "heads", "e" * 64) is None  # made from other inputs
    assert load_stage(tmp_path, "sublayers", "d" * 64) is None  # never made
    (tmp_path / "stages" / "heads.safetensors").write_bytes(b"torn")
    assert load_stage(tmp_path, "heads", "d" * 64) is None  # not the tensors its info describes


def test_complete_groups_need_all_six_accepted_emotions():
    rows = [
        {"id": f"{skeleton}-{valence}-{e}", "skeleton_id": skeleton, "valence": valence, "target_emotion": e}
        for skeleton in ("s1", "s2")
        for valence in ("positive", "negative")
        for e in reversed(EMOTIONS)
    ]
    accepted = {row["id"]: True for row in rows}
    accepted[f"s2-negative-{EMOTIONS[3]}"] = False
    groups = complete_groups(rows, accepted)
    assert [group for group, _ in groups] == [("s1", "positive"), ("s1", "negative"), ("s2", "positive")]
    assert all([row["target_emotion"] for row in members] == list(EMOTIONS) for _, members in groups)
