"""Emotion directions (formula, discovery, artifact) and the `steering` method, on the tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from sev_bench import prompts
from sev_bench.cli import main
from sev_bench.data import dataset_fingerprint, load_sev, select_rows
from sev_bench.discovery.artifacts import MIN_GROUPS, check_model
from sev_bench.discovery.directions import (
    DirectionConfig,
    discover_directions,
    emotion_directions,
    load_directions,
)
from sev_bench.errors import UserError
from sev_bench.methods import resolve_method
from sev_bench.methods.steering import resolve_layers
from sev_bench.models import load_model
from sev_bench.prompts import EMOTIONS, VALENCES
from sev_bench.runner import RunRequest, run


def test_directions_recover_a_planted_structure():
    """states[g, e] = base_g + u_e (+ noise): the directions must be normalize(u_e - mean_e u), whatever
    the per-group offsets are (within-group centring removes them)."""
    generator = torch.Generator().manual_seed(0)
    groups, layers, hidden = 40, 3, 16
    emotion_part = torch.randn(6, layers, hidden, generator=generator)
    group_offset = 50 * torch.randn(groups, 1, layers, hidden, generator=generator)
    states = group_offset + emotion_part[None]
    expected = emotion_part - emotion_part.mean(0, keepdim=True)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(emotion_directions(states), expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(emotion_directions(states).norm(dim=-1), torch.ones(6, layers))
    # With noise the estimate stays close (cosine > 0.99 with 40 groups).
    noisy = states + 0.1 * torch.randn(states.shape, generator=generator)
    cosine = (emotion_directions(noisy) * expected).sum(-1)
    assert cosine.min() > 0.99


def test_directions_are_invariant_to_a_shared_shift_per_emotion_order():
    states = torch.randn(10, 6, 2, 8, generator=torch.Generator().manual_seed(1))
    shifted = states + torch.randn(1, 1, 2, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(emotion_directions(states), emotion_directions(shifted), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def train_rows(sev_data_dir):
    return select_rows(load_sev(str(sev_data_dir))["train"], list(EMOTIONS), list(VALENCES), None)


@pytest.fixture(scope="module")
def qwen():
    return load_model("tiny-random-qwen2", dtype="float32", device="cpu")


def _discover(loaded, rows, sev_data_dir, out, limit=144, **kwargs):
    return discover_directions(
        loaded,
        config=DirectionConfig(accept=kwargs.pop("accept", "all"), limit=limit),
        dataset_sha256=dataset_fingerprint(str(sev_data_dir)),
        train_rows=rows,
        output_dir=out,
        progress=False,
        log=lambda message: None,
        **kwargs,
    )


def test_discovery_writes_a_reusable_checked_artifact(qwen, train_rows, sev_data_dir, tmp_path):
    out = tmp_path / "dirs"
    directions, reused = _discover(qwen, train_rows, sev_data_dir, out)
    assert not reused
    assert directions.tensors["mlp"].shape == (6, qwen.num_layers, qwen.model.config.hidden_size)
    assert set(directions.tensors) == {"attn", "mlp"} | {f"{p}.{v}" for p in ("attn", "mlp") for v in VALENCES}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["groups"] == 24 and meta["groups_per_emotion"]["fear"] == 24  # 144 rows = 8 skeletons x 3
    assert meta["model"]["id"] == "tiny-random-qwen2" and meta["scorer"] is None
    for name in ("report.md", "direction_similarity.png", "valence_consistency.png", "pca_states.png"):
        assert (out / name).is_file(), name

    loaded_back = load_directions(out)
    for name, tensor in directions.tensors.items():
        assert torch.equal(loaded_back.tensors[name], tensor)
    again, reused = _discover(qwen, train_rows, sev_data_dir, out)
    assert reused and again.sha256 == directions.sha256
    with pytest.raises(UserError, match="other inputs"):
        _discover(qwen, train_rows, sev_data_dir, out, limit=162)

    llama = load_model("tiny-random-llama", dtype="float32", device="cpu")
    with pytest.raises(UserError, match="made for model tiny-random-qwen2"):
        check_model(loaded_back.metadata, llama, out)

    (out / "directions.safetensors").write_bytes(b"tampered")
    with pytest.raises(UserError, match="does not match"):
        load_directions(out)


def test_discovery_stops_below_the_minimum_of_complete_groups(qwen, train_rows, sev_data_dir, tmp_path):
    with pytest.raises(UserError, match=f"at least {MIN_GROUPS}"):
        _discover(qwen, train_rows, sev_data_dir, tmp_path / "few", limit=18 * 2)  # 2 skeletons: 6 groups


def test_scorer_acceptance_elicits_scores_and_reports_groups(qwen, train_rows, sev_data_dir, tmp_path):
    from sev_bench.scoring import load_scorer

    scorer = load_scorer("test-keywords")
    out = tmp_path / "scored"
    # A random model's replies rarely hit the keywords of all six emotions: the minimum stops it...
    with pytest.raises(UserError, match="groups have all six emotions accepted"):
        _discover(qwen, train_rows, sev_data_dir, out, limit=36, accept="scorer", scorer=scorer, batch_size=36)
    # ... after every elicited reply was saved with its acceptance (a rerun resumes from them).
    records = [json.loads(line) for line in (out / "elicitation.jsonl").read_text().splitlines()]
    assert len(records) == 36 and {"id", "completion", "accepted"} <= set(records[0])


def test_layer_ranges():
    assert resolve_layers("auto", 28) == list(range(11, 21))  # the protocol's layers on its 28-layer model
    assert resolve_layers("auto", 30) == list(range(12, 22))  # SmolLM2-135M
    assert resolve_layers("2-3", 4) == [2, 3]
    assert resolve_layers("0,3", 4) == [0, 3]
    for bad in ("3-9", "x", "", "-1"):
        with pytest.raises(UserError, match="layers"):
            resolve_layers(bad, 4)


def test_steering_parameters_are_validated():
    with pytest.raises(UserError, match="scale"):
        resolve_method("steering", ["scale=cubic"])
    with pytest.raises(UserError, match="expected float"):
        resolve_method("steering", ["alpha=strong"])
    config = resolve_method("steering")
    assert config.method.params["alpha"] == 8.0 and config.method.params["position"] == "mlp"
    assert config.method.params["system_prompt"] == prompts.NEUTRAL_SYSTEM
    authors = resolve_method("steering-authors")
    assert authors.method.params["system_prompt"] == prompts.STEERING_SYSTEM
    assert authors.decoding_policy == "method-declared"
    assert config.decoding_policy == "benchmark-default"
    assert config.generation.as_dict() == {"do_sample": False, "max_new_tokens": 100}


def _run(tmp_path, name, method, overrides, model="tiny-random-qwen2"):
    request = RunRequest(
        method=method,
        model=model,
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


def test_alpha_zero_steering_gives_exactly_the_replies_of_none(tmp_path):
    steer = ["discovery_limit=144", "layers=0-3"]  # the default chat: the same as none's
    results, zero = _run(tmp_path, "zero", "steering", [*steer, "alpha=0"])
    _, plain = _run(tmp_path, "none", "none", [])
    assert zero == plain
    artifact = results["spec"]["method"]["artifact"]
    assert len(artifact["sha256"]) == 64 and results["spec"]["generation"]["policy"] == "benchmark-default"
    _, steered = _run(tmp_path, "eight", "steering", [*steer, "alpha=8"])
    assert steered != plain  # a non-zero alpha changes replies (the check above is not vacuous)


def test_run_refuses_directions_made_for_another_model(tmp_path, capsys, qwen, train_rows, sev_data_dir):
    out = tmp_path / "qwen-dirs"
    _discover(qwen, train_rows, sev_data_dir, out)
    status = main(
        [
            "run",
            "--method",
            "steering",
            "--model",
            "tiny-random-llama",
            "--limit",
            "6",
            "--scorer",
            "test-keywords",
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            f"directions={out}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "made for model tiny-random-qwen2" in err[0]


def test_tune_runs_the_grid_on_dev_only_and_writes_a_runnable_config(tmp_path, monkeypatch):
    from sev_bench import tuning

    splits = []
    real_run = tuning.run

    def spy(request):
        splits.append(request.split)
        return real_run(request)

    monkeypatch.setattr(tuning, "run", spy)
    base = RunRequest(
        model="tiny-random-qwen2", limit=12, scorer="test-keywords", progress=False, dtype="float32",
        device="cpu", split="test", overrides=["discovery_limit=144"],
    )
    out = tmp_path / "tune"
    summary = tuning.tune(tuning.TuneRequest("steering", tuning.parse_grid(["alpha=0,8"]), str(out), base))
    assert splits == ["dev", "dev"]  # even though the base request said test
    assert [p["point"] for p in summary["points"]] == [{"alpha": "0"}, {"alpha": "8"}]
    best = max(summary["points"], key=lambda p: p["objective"])
    assert summary["chosen"] == best["point"]
    tuned = resolve_method(str(out / "tuned.yaml"))
    assert tuned.method.name == "steering"
    assert tuned.method.params["alpha"] == float(summary["chosen"]["alpha"])
    assert tuned.method.params["discovery_limit"] == 144
    assert "(chosen)" in (out / "tuning.md").read_text()


def test_tune_grid_errors():
    from sev_bench import tuning

    for bad in (["alpha"], ["alpha="], ["=1,2"], []):
        with pytest.raises(UserError):
            tuning.parse_grid(bad)
    with pytest.raises(UserError, match="twice"):
        tuning.parse_grid(["alpha=1", "alpha=2"])
    base = RunRequest(overrides=["alpha=3"])
    with pytest.raises(UserError, match="both in --grid and --set"):
        tuning.tune(tuning.TuneRequest("steering", {"alpha": ["1"]}, "unused", base))
    with pytest.raises(UserError, match="expected float"):
        tuning.tune(tuning.TuneRequest("steering", {"alpha": ["strong"]}, "unused", RunRequest()))
