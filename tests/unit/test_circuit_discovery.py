"""Circuit discovery end to end on the tiny random models: the batched engine and each stage called
directly, the discovery and its artifact (resume, refusals), and the `circuit` method."""

from __future__ import annotations

import json

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.hf import render_prompt
from sev_bench.cli import main
from sev_bench.data import dataset_fingerprint, load_sev, select_rows
from sev_bench.discovery.artifacts import seal
from sev_bench.discovery.circuit import CIRCUIT_STAGES, circuit_job, discover_circuit
from sev_bench.discovery.circuit_artifact import (
    analysis_key,
    check_circuit,
    circuit_key,
    default_circuit_dir,
    load_circuit,
)
from sev_bench.discovery.circuit_config import CircuitConfig
from sev_bench.discovery.circuit_math import down_proj_betas, neuron_contributions
from sev_bench.discovery.directions import DirectionConfig, discover_directions
from sev_bench.discovery.last_token import LastTokenBatch
from sev_bench.discovery.stages import activations as activations_stage
from sev_bench.discovery.stages import heads as heads_stage
from sev_bench.discovery.stages import sublayers as sublayers_stage
from sev_bench.discovery.stages import validation as validation_stage
from sev_bench.discovery.stages.heads import head_importance, head_importance_naive
from sev_bench.discovery.stages.integration import PAPER_SHARES
from sev_bench.errors import UserError
from sev_bench.interventions import Capture, HookSession, InterventionSpec, handle_count
from sev_bench.methods import resolve_method
from sev_bench.models import load_model
from sev_bench.prompts import EMOTIONS, VALENCES
from sev_bench.runner import RunRequest, run

TINY = ["tiny-random-qwen2", "tiny-random-llama"]
SMALL = dict(validation_k=(1, 2), validation_scales=(1.0,))  # a quick validation grid for the tests


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


# ----------------------------------------------------------------------------- each stage called directly


@pytest.fixture(scope="module")
def job(qwen, qwen_directions, train_rows):
    """A small job on the tiny qwen: the first 48 train rows (8 complete groups), the 144-row directions."""
    config = CircuitConfig(limit=48, validation_k=(1, 2), validation_scales=(0.0, 1.0))
    return circuit_job(qwen, config, train_rows[:48], qwen_directions, batch_size=8, max_rows=32)


@pytest.fixture(scope="module")
def stage_tensors(job):
    """Each stage's (tensors, info), computed directly in the table's order, each from the earlier ones."""
    earlier, infos = {}, {}
    for stage in CIRCUIT_STAGES:
        earlier[stage.name], infos[stage.name] = stage.compute(job, earlier, None)
    return earlier, infos


def test_the_stage_table_runs_in_the_order_each_stage_needs():
    assert [stage.name for stage in CIRCUIT_STAGES] == ["activations", "heads", "sublayers", "validation"]
    assert [stage.unit for stage in CIRCUIT_STAGES] == ["prompt", "copy", "copy", "copy"]


def test_circuit_job_builds_the_prompts_and_v_ref(job, qwen):
    assert len(job.inputs.rows) == len(job.inputs.emotion_texts) == 48 and job.inputs.groups == 8
    assert job.inputs.in_group.all() and job.inputs.emotions.bincount().tolist() == [8] * 6
    assert len(job.inputs.neutral_texts) == 8 and all(len(e) == 6 for e in job.inputs.neutral_emotions)
    assert job.v_ref.shape == (6, qwen.model.config.hidden_size) and job.reference_layers == [3]
    torch.testing.assert_close(job.v_ref.norm(dim=-1), torch.ones(6))


def test_activations_stage(job, qwen, stage_tensors):
    tensors, info = stage_tensors[0]["activations"], stage_tensors[1]["activations"]
    layers, d_ff, width = qwen.num_layers, qwen.model.config.intermediate_size, qwen.num_heads * qwen.head_dim
    assert info == {"rows": 48, "groups": 8}
    assert activations_stage.total(job, {}) == 48 and "48 emotion-instructed prompts" in activations_stage.describe(job)
    for name in ("contrib_mean", "contrib_pos", "contrib_neg", "dmu_mlp"):
        assert tensors[name].shape == (6, layers, d_ff), name
    assert tensors["dmu_attn"].shape == (6, layers, width) and tensors["sigma"].shape == (layers, 2)
    assert tensors["rows_per_emotion"].tolist() == tensors["groups_per_emotion"].tolist() == [8.0] * 6
    torch.testing.assert_close(tensors["contrib_pos"] + tensors["contrib_neg"], tensors["contrib_mean"])
    assert bool((tensors["contrib_pos"] >= 0).all()) and bool((tensors["contrib_neg"] <= 0).all())
    # Difference vectors are centred over the emotions; sigma is an RMS.
    torch.testing.assert_close(tensors["dmu_mlp"].sum(0), torch.zeros(layers, d_ff), atol=1e-4, rtol=0)
    assert bool((tensors["sigma"] > 0).all())


def test_heads_stage(job, qwen, stage_tensors):
    tensors, info = stage_tensors[0]["heads"], stage_tensors[1]["heads"]
    assert info == {"head_space": "mlp_input"}
    assert heads_stage.total(job, {}) == 48 * qwen.num_layers * qwen.num_heads
    assert tensors["head_importance"].shape == (6, qwen.num_layers, qwen.num_heads)
    assert tensors["rows_per_emotion"].tolist() == [8.0] * 6
    sums, counts = head_importance(
        qwen, job.inputs.emotion_texts, job.inputs.emotions, job.directions["attn"], batch_size=8, max_rows=32
    )
    torch.testing.assert_close(tensors["head_importance"], sums / counts[:, None, None])


def test_sublayers_stage(job, qwen, stage_tensors):
    tensors, info = stage_tensors[0]["sublayers"], stage_tensors[1]["sublayers"]
    layers, alphas = qwen.num_layers, len(job.config.alphas)
    assert info == {"reference_layers": [3]}
    assert sublayers_stage.total(job, stage_tensors[0]) == 48 * alphas * layers * 2
    assert tensors["importance_raw"].shape == tensors["importance"].shape == (6, layers, 2)
    assert tensors["delta_per_alpha"].shape == (6, alphas, layers, 2)
    assert tensors["prompts_per_emotion"].tolist() == [8.0] * 6 and torch.equal(tensors["v_ref"], job.v_ref)
    torch.testing.assert_close(tensors["importance"].sum(dim=(1, 2)), torch.ones(6))


def test_validation_stage(job, stage_tensors):
    """One record per (emotion, probe), over the emotion's 8 prompts; enhancing by scale 0 adds zeros, so
    it changes no score at all, and the clean scores are the same whatever the probe (up to the float
    noise of decode calls of other sizes)."""
    tensors, records = stage_tensors[0]["validation"], stage_tensors[1]["validation"]["records"]
    assert list(tensors) == ["done"]
    # per emotion and kind: 2 k x (2 ablation + 2 scales x 2 enhancement) = 12 probes
    assert len(records) == 6 * 2 * 12 == validation_stage.total(job, stage_tensors[0]) // 8
    assert all(r["n"] == 8 for r in records)
    zero = [r for r in records if r["mode"] == "enhance" and r["scale"] == 0.0]
    assert len(zero) == 48 and all(r["delta_local"] == 0.0 and r["delta_final"] == 0.0 for r in zero)
    for emotion in EMOTIONS:
        for kind in ("neurons", "heads"):
            same = [r for r in records if (r["emotion"], r["kind"]) == (emotion, kind)]
            for name in ("clean_local", "clean_final"):
                assert [r[name] for r in same] == pytest.approx([same[0][name]] * len(same), rel=1e-4, abs=1e-5)
    assert any(r["delta_local"] != 0 for r in records if r["mode"] == "ablate" and r["selection"] == "top")


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
