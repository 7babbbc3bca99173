"""One zero for every intervention: through the CLI, `steering` at alpha=0 and `circuit` at scale=0 give
`none`'s replies byte for byte on both tiny models, with every other parameter at its default (the one
neutral chat of issue 14), and a non-zero strength changes them (so the equality is not vacuous)."""

from __future__ import annotations

import json

import pytest

from sev_bench.cli import main

COMMON = ["--limit", "12", "--scorer", "test-keywords", "--dtype", "float32", "--device", "cpu", "--no-progress"]


def _replies(tmp_path, capsys, model: str, name: str, method: str, *overrides: str) -> dict[str, str]:
    out = tmp_path / model / name
    sets = [item for value in overrides for item in ("--set", value)]
    assert main(["run", "--method", method, "--model", model, *COMMON, *sets, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row["completion"] for row in map(json.loads, lines)}


@pytest.mark.parametrize("model", ["tiny-random-qwen2", "tiny-random-llama"])
def test_zero_strength_equals_none_through_the_cli(tmp_path, capsys, monkeypatch, model):
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
    plain = _replies(tmp_path, capsys, model, "none", "none")
    assert len(plain) == 12
    steering_zero = _replies(tmp_path, capsys, model, "steering0", "steering", "alpha=0", "discovery_limit=48")
    circuit_zero = _replies(tmp_path, capsys, model, "circuit0", "circuit", "scale=0", "discovery_limit=48")
    assert steering_zero == plain
    assert circuit_zero == plain
    steered = _replies(tmp_path, capsys, model, "steering8", "steering", "alpha=8", "discovery_limit=48")
    modulated = _replies(tmp_path, capsys, model, "circuit200", "circuit", "scale=200", "discovery_limit=48")
    assert steered.keys() == plain.keys() and steered != plain
    assert modulated.keys() == plain.keys() and modulated != plain
