"""Circuit discovery (stages, artifact) and the `circuit` method, on planted data and the tiny models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.hf import render_prompt
from sev_bench.cli import main
from sev_bench.data import dataset_fingerprint, load_sev, select_rows
from sev_bench.discovery.circuit import (
    PAPER_SHARES,
    CircuitConfig,
    LastTokenBatch,
    aligned_to,
    allocate,
    analysis_key,
    check_circuit,
    circuit_budget,
    circuit_key,
    default_circuit_dir,
    difference_vectors,
    difference_vectors_from_sums,
    discover_circuit,
    down_proj_betas,
    head_importance,
    head_importance_naive,
    integrate,
    jaccard_matrix,
    layer_caps,
    load_circuit,
    neuron_contributions,
    normalise_importance,
    paper_share_budget,
    reference_direction,
    reference_layers,
    selection_shares,
    split_budget,
    sublayer_importance,
    top_mask,
)
from sev_bench.discovery.directions import DirectionConfig, discover_directions, seal
from sev_bench.errors import UserError
from sev_bench.interventions import Capture, HookSession, InterventionSpec, handle_count
from sev_bench.methods import resolve_method
from sev_bench.models import load_model
from sev_bench.prompts import EMOTIONS, VALENCES
from sev_bench.runner import RunRequest, run

TINY = ["tiny-random-qwen2", "tiny-random-llama"]
# The protocol's worked example (step 6b): anger's heads per layer on Llama-3.2-3B.
PROTOCOL_ANGER_HEADS = [2] * 10 + [3, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 11, 12, 12, 11, 11, 10, 9]
SMALL = dict(validation_k=(1, 2), validation_scales=(1.0,))  # a quick validation grid for the tests


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


# ----------------------------------------------------------------------------- invariants on the tiny models


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, dtype="float32", device="cpu")


def _texts(loaded, n):
    return [
        render_prompt(
            loaded.tokenizer,
            prompts.chat(
                prompts.PROMPTING_SYSTEM_TEMPLATE.format(emotion=EMOTIONS[i % 6]),
                "I went to the office" + " again" * i,
                "The meeting was moved.",
            ),
        )
        for i in range(n)
    ]


def _random_directions(loaded, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = loaded.model.config.hidden_size
    return torch.nn.functional.normalize(torch.randn(6, loaded.num_layers, hidden, generator=generator), dim=-1)


def test_contributions_sum_to_the_mlp_outputs_projection(tiny):
    directions = _random_directions(tiny)
    texts = _texts(tiny, 3)
    encoded = tiny.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    layers = range(tiny.num_layers)
    captures = [Capture(site, layer) for layer in layers for site in ("mlp_neuron", "resid_mid", "resid_post")]
    with HookSession(tiny, captures=captures) as session, torch.inference_mode():
        tiny.model(**encoded)
    betas = down_proj_betas(tiny, directions)
    for layer in layers:
        acts = session.captured[("mlp_neuron", layer)][0]  # [3, d_ff]
        mlp_out = session.captured[("resid_post", layer)][0] - session.captured[("resid_mid", layer)][0]
        for e in range(6):
            summed = neuron_contributions(acts, betas[e, layer]).sum(-1)
            torch.testing.assert_close(summed, mlp_out @ directions[e, layer], rtol=1e-4, atol=1e-5)


def test_batched_head_importance_matches_the_loop_and_a_zero_slice_changes_nothing(tiny):
    """Zero the value projection of KV head 0 in layer 1: the query heads that read it (0 and 1, GQA) output
    zeros, so zeroing their slice must change nothing, exactly, in either space; the other heads still
    matter."""
    loaded = load_model(tiny.model_id, dtype="float32", device="cpu")  # a copy: its weights are edited
    with torch.no_grad():
        loaded.layer(1).self_attn.v_proj.weight[: loaded.head_dim] = 0
    directions = _random_directions(loaded, 1)
    texts = _texts(loaded, 5)
    emotions = torch.tensor([0, 3, 0, 5, 1])
    results = {}
    for space in ("mlp_input", "residual"):
        batched, counts = head_importance(loaded, texts, emotions, directions, space=space, batch_size=2, max_rows=12)
        naive, naive_counts = head_importance_naive(loaded, texts, emotions, directions, space=space)
        assert torch.equal(counts, naive_counts) and counts.tolist() == [2, 1, 0, 1, 0, 1]
        torch.testing.assert_close(batched, naive, rtol=1e-4, atol=1e-6)
        assert torch.equal(batched[:, 1, :2], torch.zeros(6, 2))
        assert float(batched[:, 1, 2:].abs().max()) > 0
        results[space] = batched
    # On the raw residual the importance is the head's direct effect at the same layer: <W_O[:, slice] x_head, v>.
    encoded = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with HookSession(loaded, captures=[Capture("attn_head", 2)]) as session, torch.inference_mode():
        loaded.model(**encoded)
    x = session.captured[("attn_head", 2)][0].view(5, loaded.num_heads, loaded.head_dim)
    weight = loaded.layer(2).self_attn.o_proj.weight.detach().view(-1, loaded.num_heads, loaded.head_dim)
    direct = torch.einsum("dhk,nhk->nhd", weight, x)  # [5, heads, hidden]
    projected = torch.einsum("nhd,nd->nh", direct, directions[emotions, 2])
    expected = torch.zeros(6, loaded.num_heads).index_add_(0, emotions, projected)
    torch.testing.assert_close(results["residual"][:, 2], expected, rtol=1e-3, atol=1e-5)
    assert handle_count(loaded.model) == 0


def _rms_norm_by_hand(norm, states):
    """What an RMSNorm module computes, written out: gain * h / sqrt(mean(h^2) + eps)."""
    return norm.weight.detach() * states / (states.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


def test_head_importance_on_the_mlp_input_is_the_authors_reading(tiny):
    """The default head importance (head_space=mlp_input) is, at the last prompt token,
    <N(h_mid), v> - <N(h_mid - W_O[:, head] x_head), v> with N the layer's post_attention_layernorm (its
    gain made non-trivial here): what the authors' script reads as the MLP's input. It differs from the
    raw-residual reading."""
    loaded = load_model(tiny.model_id, dtype="float32", device="cpu")  # a copy: its norms are edited
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in range(loaded.num_layers):
            norm = loaded.layer(layer).post_attention_layernorm
            norm.weight.copy_(0.2 + 2 * torch.rand(norm.weight.shape, generator=generator))
    directions = _random_directions(loaded, 2)
    texts = _texts(loaded, 4)
    emotions = torch.tensor([2, 0, 2, 4])
    default, _ = head_importance(loaded, texts, emotions, directions, batch_size=2, max_rows=12)
    residual, _ = head_importance(loaded, texts, emotions, directions, space="residual", batch_size=2, max_rows=12)

    encoded = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    layers, heads, head_dim = loaded.num_layers, loaded.num_heads, loaded.head_dim
    captures = [Capture(site, layer) for layer in range(layers) for site in ("resid_mid", "attn_head")]
    with HookSession(loaded, captures=captures) as session, torch.inference_mode():
        loaded.model(**encoded)
    expected = torch.zeros(6, layers, heads)
    for layer in range(layers):
        mid = session.captured[("resid_mid", layer)][0]  # [4, d]
        x = session.captured[("attn_head", layer)][0].view(len(texts), heads, head_dim)
        weight = loaded.layer(layer).self_attn.o_proj.weight.detach().view(-1, heads, head_dim)
        masked = mid[:, None] - torch.einsum("dhk,nhk->nhd", weight, x)  # [4, heads, d]: h_mid without the head
        norm = loaded.layer(layer).post_attention_layernorm
        v = directions[emotions, layer]  # [4, d]
        clean = (_rms_norm_by_hand(norm, mid) * v).sum(-1)  # [4]
        without = (_rms_norm_by_hand(norm, masked) * v[:, None]).sum(-1)  # [4, heads]
        expected[:, layer].index_add_(0, emotions, clean[:, None] - without)
    torch.testing.assert_close(default, expected, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(default, residual, rtol=1e-2, atol=1e-3)
    assert handle_count(loaded.model) == 0


def test_head_space_and_budget_rule_are_in_the_circuit_key(qwen):
    """Both settings are part of a circuit's identity, so a circuit cached under the old meaning is not
    reused: head_space changes the analysis (and the cache folder), budget_rule the integration only (the
    stages are reused, the artifact is rebuilt)."""
    fingerprint = {"train": "1" * 64, "test": "2" * 64}

    def key(**settings):
        return circuit_key(qwen, fingerprint, None, "d" * 64, CircuitConfig(**settings), "float32")

    default, residual, per_sublayer = key(), key(head_space="residual"), key(budget_rule="per_sublayer")
    assert default["config"]["head_space"] == "mlp_input" and default["integration"]["budget_rule"] == "paper_shares"
    assert default != residual and analysis_key(default) != analysis_key(residual)
    assert default_circuit_dir(default) != default_circuit_dir(residual)
    assert default != per_sublayer and analysis_key(default) == analysis_key(per_sublayer)
    assert default_circuit_dir(default) == default_circuit_dir(per_sublayer)
    # A key written before these settings existed matches neither.
    old = {**analysis_key(default), "config": {k: v for k, v in default["config"].items() if k != "head_space"}}
    assert old not in (default, analysis_key(default))
    with pytest.raises(UserError, match="head_space"):
        CircuitConfig(head_space="normalised")
    with pytest.raises(UserError, match="budget_rule"):
        CircuitConfig(budget_rule="dense")


def test_last_token_batch_equals_a_full_forward(tiny):
    """Prefill without the last token + one decode step for copies == the full prompt forward, with and
    without an intervention at that token; decode captures, the final-norm capture and the early stop work."""
    texts = _texts(tiny, 3)
    encoded = tiny.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    hidden, last = tiny.model.config.hidden_size, tiny.num_layers - 1
    push = torch.linspace(-1, 1, hidden)
    hooks = handle_count(tiny.model)
    with torch.inference_mode():
        reference = tiny.model.model(**encoded).last_hidden_state[:, -1]
    final_capture = [Capture("resid_final", last)]
    with HookSession(tiny, captures=final_capture) as session, torch.inference_mode():
        tiny.model(**encoded)
    plain = session.captured[("resid_final", last)][0]
    torch.testing.assert_close(plain, reference)  # the capture is the post-norm last hidden state
    with pytest.raises(ValueError, match="resid_final"):
        HookSession(tiny, captures=[Capture("resid_final", 0)])
    spec = InterventionSpec("mlp_out", 1, "add", push, positions="last_prompt")
    with HookSession(tiny, [spec], final_capture) as session, torch.inference_mode():
        tiny.model(**encoded)
    pushed = session.captured[("resid_final", last)][0]

    batch = LastTokenBatch(tiny, texts)
    rows = torch.tensor([0, 1, 2, 2, 0])
    value = torch.zeros(5, hidden)
    value[3:] = push  # rows 3 and 4 (copies of prompts 2 and 0) get the push
    spec = InterventionSpec("mlp_out", 1, "add", value, positions="generated")
    captured, final = batch.step(rows, [spec], [Capture("resid_post", 1, decode=True)])
    torch.testing.assert_close(final[:3], plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final[3], pushed[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final[4], pushed[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(final[3], plain[2])  # the push does change the state
    assert captured[("resid_post", 1)].shape == (5, hidden)
    stopped, none = batch.step(rows, [spec], [Capture("resid_post", 1, decode=True)], stop_after=("resid_post", 1))
    assert none is None and torch.equal(stopped[("resid_post", 1)], captured[("resid_post", 1)])
    assert handle_count(tiny.model) == hooks == 0


# ----------------------------------------------------------------------------- discovery and the artifact


@pytest.fixture(scope="module")
def train_rows(sev_data_dir):
    return select_rows(load_sev(str(sev_data_dir))["train"], list(EMOTIONS), list(VALENCES), None)


@pytest.fixture(scope="module")
def qwen():
    return load_model("tiny-random-qwen2", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def qwen_directions(qwen, train_rows, sev_data_dir, tmp_path_factory):
    directions, _ = discover_directions(
        qwen,
        config=DirectionConfig(limit=144),
        dataset_sha256=dataset_fingerprint(str(sev_data_dir)),
        train_rows=train_rows,
        output_dir=tmp_path_factory.mktemp("dirs"),
        progress=False,
        log=lambda m: None,
    )
    return directions


def _discover(loaded, directions, rows, sev_data_dir, out, log=lambda message: None, report=False, **config):
    return discover_circuit(
        loaded,
        config=CircuitConfig(limit=144, **{**SMALL, **config}),
        dataset_sha256=dataset_fingerprint(str(sev_data_dir)),
        train_rows=rows,
        directions=directions,
        output_dir=out,
        progress=False,
        log=log,
        max_rows=64,
        report=report,
    )


@pytest.fixture(scope="module")
def discovered(qwen, qwen_directions, train_rows, sev_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("circuit")
    circuit, reused = _discover(qwen, qwen_directions, train_rows, sev_data_dir, out, report=True)
    assert not reused
    return circuit


def test_discovery_writes_a_complete_checked_artifact(discovered, qwen, qwen_directions):
    out, meta, tensors = discovered.path, discovered.metadata, discovered.tensors
    layers, heads, d_ff = qwen.num_layers, qwen.num_heads, qwen.model.config.intermediate_size
    assert tensors["neurons"].shape == (6, layers, d_ff) and tensors["heads"].shape == (6, layers, heads)
    assert tensors["dmu_mlp"].shape == (6, layers, d_ff)
    assert tensors["dmu_attn"].shape == (6, layers, heads * qwen.head_dim)
    # The paper's shares (the default rule) of 4 x 4 heads and 4 x 128 neurons are 4 heads and 1 neuron,
    # raised to the per-layer minimums: 2 heads and 4 neurons per layer, i.e. 8 heads + 16 neurons.
    assert meta["head_space"] == "mlp_input" and meta["config"]["head_space"] == "mlp_input"
    assert meta["budget"] == {
        "rule": "paper_shares",
        "neurons": 16,
        "heads": 8,
        "total": 24,
        "selected": {"neurons": 16, "heads": 8},
        "shares": {
            "heads": {"selected": 8, "total": 16, "percent": 50.0},
            "neurons": {"selected": 16, "total": 512, "percent": 3.125},
        },
        "paper_shares": PAPER_SHARES,
    }
    for e, emotion in enumerate(EMOTIONS):
        counts = meta["counts_per_layer"][emotion]
        assert tensors["neurons"][e].sum(-1).tolist() == counts["neurons"] == [4] * layers
        assert tensors["heads"][e].sum(-1).tolist() == counts["heads"] == [2] * layers
    assert meta["model"]["id"] == "tiny-random-qwen2" and meta["scorer"] is None and meta["scorer_sha256"] is None
    assert meta["directions"]["sha256"] == qwen_directions.sha256 and meta["groups"] == 24
    assert set(meta["dataset_sha256"]) == {"train", "test"}
    assert set(meta["timings"]) == {"activations", "heads", "sublayers", "validation", "integration", "report"}
    selected = json.loads((out / "circuit.json").read_text())
    assert len(selected["anger"]["heads"]) == layers
    for name in (
        "report.md",
        "head_importance.png",
        "neuron_long_tail.png",
        "sublayer_importance.png",
        "validation_ablation.png",
        "validation_enhancement.png",
        "circuit_size.png",
        "jaccard.png",
        "validation.csv",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Wall time per stage" in report and "Jaccard" in report
    # The report states the space head importance was read in and compares the shares with the paper's.
    assert "`head_space: mlp_input`" in report and "post_attention_layernorm(h_mid)" in report
    assert "head importance in the same space, the MLP's input" in report
    assert "selected per emotion: heads 8 / 16 (50%), MLP neurons 16 / 512 (3.12%)" in report
    assert "heads 168 / 672 (25%), neurons 392 / 229,376 (0.171%)" in report
    assert "rule `paper_shares`" in report
    csv_lines = (out / "validation.csv").read_text().splitlines()
    # 6 emotions x (neurons: 2 k x (2 ablate + 2 enhance) + heads: same) = 96 rows + header
    assert len(csv_lines) == 97 and csv_lines[0].startswith("emotion,kind,layer,mode,selection,k,scale,n")

    loaded_back = load_circuit(out)
    for name, tensor in tensors.items():
        assert torch.equal(loaded_back.tensors[name], tensor)
    assert loaded_back.sha256 == discovered.sha256


def test_discovery_resumes_stages_and_redoes_only_the_integration(
    discovered, qwen, qwen_directions, train_rows, sev_data_dir
):
    out = discovered.path
    messages = []
    again, reused = _discover(qwen, qwen_directions, train_rows, sev_data_dir, out, messages.append)
    assert reused and again.sha256 == discovered.sha256
    # Another budget (the per-sublayer rule: 5 x 8 sublayers = 40): every analysis stage is reused, only the
    # integration is redone.
    messages.clear()
    other, reused = _discover(
        qwen,
        qwen_directions,
        train_rows,
        sev_data_dir,
        out,
        messages.append,
        budget_rule="per_sublayer",
        budget_per_sublayer=5,
    )
    assert not reused and other.metadata["budget"]["total"] == 40 and other.metadata["budget"]["rule"] == "per_sublayer"
    assert other.metadata["budget"]["shares"]["heads"] == {"selected": 12, "total": 16, "percent": 75.0}
    assert sum("reusing" in m for m in messages) == 4
    assert all(other.metadata["timings"][s]["reused"] for s in ("activations", "heads", "sublayers", "validation"))
    # A killed discovery (here: the heads stage lost) recomputes that stage only.
    (out / "stages" / "heads.json").unlink()
    messages.clear()
    back, _ = _discover(qwen, qwen_directions, train_rows, sev_data_dir, out, messages.append)
    assert sum("reusing" in m for m in messages) == 3 and back.sha256 == discovered.sha256
    # Other analysis inputs in the same explicit dir are refused, the head space among them.
    with pytest.raises(UserError, match="other inputs"):
        _discover(qwen, qwen_directions, train_rows, sev_data_dir, out, alphas=(0.2,))
    with pytest.raises(UserError, match="other inputs"):
        _discover(qwen, qwen_directions, train_rows, sev_data_dir, out, head_space="residual")
    (out / "circuit.safetensors").write_bytes(b"tampered")
    with pytest.raises(UserError, match="does not match"):
        load_circuit(out)
    _discover(qwen, qwen_directions, train_rows, sev_data_dir, out)  # repaired


def test_circuit_refuses_another_model_dataset_or_scorer(discovered, qwen, sev_data_dir, tmp_path, capsys):
    fingerprint = dataset_fingerprint(str(sev_data_dir))
    check_circuit(discovered, qwen, fingerprint, None)  # its own model and data: fine
    llama = load_model("tiny-random-llama", dtype="float32", device="cpu")
    with pytest.raises(UserError, match="made for model tiny-random-qwen2"):
        check_circuit(discovered, llama, fingerprint, None)
    with pytest.raises(UserError, match="another SEV version"):
        check_circuit(discovered, qwen, {**fingerprint, "train": "0" * 64}, None)
    made_with_scorer = load_circuit(discovered.path)
    made_with_scorer.metadata["config"]["accept"] = "scorer"
    made_with_scorer.metadata["scorer_sha256"] = "f" * 64
    made_with_scorer.metadata["scorer"] = {"id": "minilm-probe"}
    from sev_bench.scoring import load_scorer

    with pytest.raises(UserError, match="scorer minilm-probe"):
        check_circuit(made_with_scorer, qwen, fingerprint, load_scorer("test-keywords"))

    # Through the command line: one line, exit status 2.
    copy_dir = tmp_path / "other-version"
    copy_dir.mkdir()
    for item in discovered.path.iterdir():
        if item.is_file():
            (copy_dir / item.name).write_bytes(item.read_bytes())
    meta = json.loads((copy_dir / "metadata.json").read_text())
    meta["dataset_sha256"]["train"] = "0" * 64
    (copy_dir / "metadata.json").write_text(json.dumps(seal(meta)))  # as if made from that SEV version
    status = main(
        [
            "run",
            "--method",
            "circuit",
            "--model",
            "tiny-random-qwen2",
            "--limit",
            "6",
            "--scorer",
            "test-keywords",
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            f"circuit={copy_dir}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "another SEV version" in err[0]
    status = main(
        [
            "run",
            "--method",
            "circuit",
            "--model",
            "tiny-random-llama",
            "--limit",
            "6",
            "--scorer",
            "test-keywords",
            "--output-dir",
            str(tmp_path / "run2"),
            "--set",
            f"circuit={discovered.path}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "made for model tiny-random-qwen2" in err[0]


# ----------------------------------------------------------------------------- the method


def test_scale_zero_circuit_is_bit_identical(discovered, qwen):
    method = resolve_method("circuit", ["scale=0"]).method
    texts = _texts(qwen, 3)
    encoded = qwen.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def generate(specs):
        with HookSession(qwen, specs), torch.inference_mode():
            tokens = qwen.model.generate(
                **encoded, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=qwen.tokenizer.pad_token_id
            )
            logits = qwen.model(**encoded).logits
        return tokens, logits

    plain = generate([])
    for emotion in EMOTIONS:
        specs = method.interventions(discovered, emotion)
        assert {s.site for s in specs} == {"mlp_neuron", "attn_head"} and len(specs) == 2 * qwen.num_layers
        zero = generate(specs)
        assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])
    strong = resolve_method("circuit", ["scale=200"]).method
    assert not torch.equal(plain[1], generate(strong.interventions(discovered, "anger"))[1])


def _run(tmp_path, name, method, overrides):
    request = RunRequest(
        method=method,
        model="tiny-random-qwen2",
        split="test",
        limit=18,
        scorer="test-keywords",
        output_dir=str(tmp_path / name),
        overrides=overrides,
        progress=False,
        dtype="float32",
        device="cpu",
    )
    results, _ = run(request)
    samples = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
    return results, {s["id"]: s["completion"] for s in samples}


def test_run_discovers_first_and_scale_zero_gives_exactly_the_replies_of_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))  # a cold cache, whatever ran before
    results, zero = _run(tmp_path, "zero", "circuit", ["discovery_limit=144", "scale=0"])
    err = capsys.readouterr().err
    assert "no emotion circuit cached for tiny-random-qwen2" in err and "discovering it first" in err
    _, plain = _run(tmp_path, "none", "none", [])
    assert zero == plain
    artifact = results["spec"]["method"]["artifact"]
    assert len(artifact["sha256"]) == 64 and "circuits" in artifact["path"]
    # The run records how the circuit was made and the shares of the model's heads and neurons it selects.
    assert artifact["head_space"] == "mlp_input" and artifact["budget_rule"] == "paper_shares"
    assert artifact["shares"] == {
        "heads": {"selected": 8, "total": 16, "percent": 50.0},
        "neurons": {"selected": 16, "total": 512, "percent": 3.125},
    }
    assert results["spec"]["method"]["params"]["system_prompt"] == prompts.NEUTRAL_SYSTEM
    _, strong = _run(tmp_path, "strong", "circuit", ["discovery_limit=144", "scale=200"])
    assert "no emotion circuit cached" not in capsys.readouterr().err  # the second run reuses it
    assert strong != plain  # a non-zero scale changes replies (the check above is not vacuous)

    # `sev-bench discover circuit` with the same inputs finds the same cached circuit.
    command = ["discover", "circuit", "--model", "tiny-random-qwen2", "--limit", "144", "--dtype", "float32"]
    assert main([*command, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert artifact["path"].startswith("$SEV_BENCH_CACHE/circuits/")  # no machine path in results
    circuit_dir = tmp_path / "cache" / artifact["path"].removeprefix("$SEV_BENCH_CACHE/")
    metadata = json.loads((circuit_dir / "metadata.json").read_text())
    assert metadata["directions"]["path"].startswith("$SEV_BENCH_CACHE/directions/")  # nor in the artifact
    assert str(tmp_path) not in (circuit_dir / "report.md").read_text()
    assert "reused" in out and artifact["path"].rsplit("/", 1)[1] in out and "wall time per stage" in out


def test_circuit_parameters_and_tuning(tmp_path):
    with pytest.raises(UserError, match="expected float"):
        resolve_method("circuit", ["scale=strong"])
    with pytest.raises(UserError, match="accept"):
        resolve_method("circuit", ["accept=some"])
    with pytest.raises(UserError, match="head_space"):
        resolve_method("circuit", ["head_space=normalised"])
    with pytest.raises(UserError, match="budget_rule"):
        resolve_method("circuit", ["budget_rule=dense"])
    config = resolve_method("circuit")
    assert config.method.params["scale"] == 1.0 and config.method.kind == "circuit"
    assert config.decoding_policy == "benchmark-default"

    from sev_bench import tuning

    base = RunRequest(
        model="tiny-random-qwen2",
        limit=12,
        scorer="test-keywords",
        progress=False,
        dtype="float32",
        device="cpu",
        overrides=["discovery_limit=144"],
    )
    summary = tuning.tune(tuning.TuneRequest("circuit", tuning.parse_grid(["scale=0,1.5"]), str(tmp_path), base))
    assert [p["point"] for p in summary["points"]] == [{"scale": "0"}, {"scale": "1.5"}]
    tuned = resolve_method(str(tmp_path / "tuned.yaml"))
    assert tuned.method.name == "circuit" and tuned.method.params["scale"] == float(summary["chosen"]["scale"])
