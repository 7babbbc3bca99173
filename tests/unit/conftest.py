"""Unit tests stay fast: they may build tiny random models and use the keyword scorer, never a trained
MiniLM scorer (loading one can mean a 20-minute first-use training). A test that needs one belongs in
tests/integration/."""

from __future__ import annotations

import pytest

from sev_bench.scoring import emotion_classifier, minilm_finetuned, minilm_probe


def _refuse_trained_scorer(cls, *args, **kwargs):
    raise AssertionError(f"a unit test loaded the trained scorer {cls.name}; move the test to tests/integration/")


@pytest.fixture(autouse=True)
def _no_trained_scorer(monkeypatch):
    for module in (emotion_classifier, minilm_finetuned, minilm_probe):
        monkeypatch.setattr(module, "load_trained", _refuse_trained_scorer)
