"""`minilm-emotions` (the default scorer): its training set, deterministic training, a calibrated stock
`BertForSequenceClassification` dir, refusal of a damaged dir. Mechanics only (a few steps on a sample);
its measured figures are in the README and `reports/scorers/`."""

from __future__ import annotations

import numpy as np
import pytest

from sev_bench import data
from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring.emotion_classifier import LABELS, MiniLMEmotions, model_sha256, train, training_rows


def test_training_rows_are_capped_unambiguous_and_free_of_held_out_skeletons(sev_data_dir):
    texts, labels, described = training_rows(sev_data_dir, cap=3000)
    assert LABELS == (*EMOTIONS, "none") and len(texts) == len(labels)
    go = described["goemotions"]["rows_by_label"]
    assert max(go.values()) == 3000 and go["disgust"] == 498 and go["fear"] == 541  # rare classes kept whole
    sev = described["sev"]["rows_by_label"]
    skeletons = data.load_skeletons(sev_data_dir)
    assert sev["none"] == 2 * len(skeletons["train"])
    held_out = {s["scenario"] for s in skeletons["dev"] + skeletons["test"]}
    assert not held_out & set(texts)
    # Llama-3.2-3B wrote two replies word for word for a train and a test scenario; nothing else is shared.
    train_skeletons = {s["skeleton_id"] for s in skeletons["train"]}
    train_replies = {
        r["gen_text"] for r in data.load_reference("train", sev_data_dir) if r["skeleton_id"] in train_skeletons
    }
    test_replies = {r["gen_text"] for r in data.load_reference("test", sev_data_dir)}
    shared = test_replies & set(texts)
    assert len(shared) <= 2 and shared <= train_replies


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, sev_data_dir):
    out = tmp_path_factory.mktemp("emotions")
    first = train(out / "a", sev_data_dir, epochs=1, max_rows=48, progress=False)
    second = train(out / "b", sev_data_dir, epochs=1, max_rows=48, progress=False)
    return first, second


def test_training_is_deterministic(tiny_models):
    first, second = tiny_models
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert model_sha256(first) == model_sha256(second)


def test_a_stock_classifier_with_the_temperature_folded_in(tiny_models):
    from transformers import pipeline

    scorer = MiniLMEmotions.from_dir(tiny_models[0])
    calibration = scorer.info()["calibration"]
    assert 0.2 <= calibration["temperature"] <= 5.0 and calibration["folded_into"]
    assert scorer.model.config.id2label == dict(enumerate(LABELS))
    texts = ["I am furious!", "The meeting is on Tuesday.", "Wow, I did not see that coming."]
    probs = scorer.predict_proba(texts)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(scorer.predict_proba(texts[::-1]), probs[::-1], atol=1e-6)  # order kept
    classify = pipeline("text-classification", model=str(tiny_models[0]), top_k=None, device="cpu")
    for row, out in zip(probs, classify(texts)):
        stock = {item["label"]: item["score"] for item in out}
        assert max(abs(stock[label] - p) for label, p in zip(LABELS, row)) < 1e-5


def test_identity_covers_config_and_weights(tiny_models, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_models[0], copy)
    assert model_sha256(copy) == MiniLMEmotions.from_dir(tiny_models[0]).sha256
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"none"', '"None"', 1))
    with pytest.raises(UserError, match="not a valid minilm-emotions model dir"):
        MiniLMEmotions.from_dir(copy)  # a label renamed in the config is refused
    (copy / "config.json").write_text(config.replace('"seed": 0', '"seed": 1'))
    assert model_sha256(copy) != model_sha256(tiny_models[0])  # metadata is part of the identity
    (copy / "model.safetensors").write_bytes((tiny_models[0] / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(UserError, match="not a valid minilm-emotions model dir"):
        MiniLMEmotions.from_dir(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(UserError, match="lacks model.safetensors"):
        MiniLMEmotions.from_dir(copy)
