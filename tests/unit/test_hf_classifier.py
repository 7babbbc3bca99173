"""hf-classifier: a tiny random DistilBERT with the j-hartmann label layout, built and saved locally."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring import load_scorer
from sev_bench.scoring.hf_classifier import BUILTIN_MAPS, DEFAULT_MODEL, HFClassifier, resolve_mapping

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]  # j-hartmann's id2label
TEXTS = [
    "I am furious about this!",
    "What a lovely surprise, thank you so much.",
    "",
    "word " * 2000,  # far beyond the model's 128 positions: must be truncated
]


def build_tiny_classifier(path, labels=LABELS):
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from sev_bench.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = 128
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        hidden_dim=64,
        n_layers=1,
        n_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = DistilBertForSequenceClassification(config)
    with torch.no_grad():  # make the logits spread out, so mapping sums are visible
        model.classifier.weight.normal_(0, 2.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier"))


@pytest.fixture(scope="module")
def scorer(model_dir) -> HFClassifier:
    return load_scorer("hf-classifier", options={"model": str(model_dir), "device": "cpu"}, verbose=False)


def test_shapes_labels_and_scores(scorer, model_dir):
    assert scorer.labels == (*EMOTIONS, "none")  # neutral -> none adds the "none" outcome
    probs = scorer.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), 7)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert scorer.predict_proba([]).shape == (0, 7)
    results = scorer.score(TEXTS[:2], ["anger", "happiness"])
    for result in results:
        assert set(result) == {"predicted_emotion", "probs", "correct"}
        assert list(result["probs"]) == [*EMOTIONS, "none"]
        assert result["correct"] == (result["predicted_emotion"] in ("anger", "happiness"))
    info = scorer.info()
    assert info["id"] == "hf-classifier" and info["sha256"] == scorer.sha256 and len(scorer.sha256) == 64
    assert info["model"]["id"] == str(model_dir) and info["model"]["architecture"].startswith("DistilBert")
    assert "model.safetensors" in info["model"]["files_sha256"]
    assert info["label_map"]["mapping"]["joy"] == "happiness" and info["label_map"]["source"] == "common names"
    json.dumps(info)  # goes into results.json


def test_mapping_sums_model_probabilities(scorer, model_dir):
    raw = scorer.model_probs(TEXTS)
    assert raw.shape == (len(TEXTS), len(LABELS)) and np.allclose(raw.sum(axis=1), 1.0)
    probs = scorer.predict_proba(TEXTS)
    column = {label: i for i, label in enumerate(scorer.labels)}
    assert np.allclose(probs[:, column["happiness"]], raw[:, LABELS.index("joy")])
    assert np.allclose(probs[:, column["none"]], raw[:, LABELS.index("neutral")])

    # joy and surprise both -> happiness: they add up; neutral dropped (null): the rest renormalised.
    custom = {**BUILTIN_MAPS[DEFAULT_MODEL], "surprise": "happiness", "neutral": None}
    merged = load_scorer("hf-classifier", options={"model": str(model_dir), "label_map": custom, "device": "cpu"})
    assert merged.labels == EMOTIONS and merged.sha256 != scorer.sha256
    got = merged.predict_proba(TEXTS)
    kept = 1.0 - raw[:, LABELS.index("neutral")]
    happiness = (raw[:, LABELS.index("joy")] + raw[:, LABELS.index("surprise")]) / kept
    assert np.allclose(got[:, EMOTIONS.index("happiness")], happiness)
    assert np.allclose(got[:, EMOTIONS.index("surprise")], 0.0)
    assert np.allclose(got.sum(axis=1), 1.0)


def test_deterministic(scorer, model_dir):
    first = scorer.predict_proba(TEXTS)
    assert np.array_equal(first, scorer.predict_proba(TEXTS))
    again = load_scorer("hf-classifier", options={"model": str(model_dir), "device": "cpu"})
    assert again.sha256 == scorer.sha256
    assert np.allclose(first, again.predict_proba(TEXTS), atol=1e-12)
    # Batching (padding) does not change a text's probabilities beyond float noise.
    one_by_one = np.concatenate([scorer.predict_proba([text]) for text in TEXTS])
    assert np.allclose(first, one_by_one, atol=1e-5)


def test_label_map_file_and_inline(scorer, model_dir, tmp_path):
    mapping = {label.upper(): target for label, target in BUILTIN_MAPS[DEFAULT_MODEL].items()}  # case-insensitive
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping), encoding="utf-8")
    from_file = load_scorer("hf-classifier", options={"model": str(model_dir), "label_map": str(path)})
    inline = load_scorer("hf-classifier", options={"model": str(model_dir), "label_map": json.dumps(mapping)})
    assert from_file.mapping == inline.mapping == scorer.mapping
    assert from_file.sha256 == scorer.sha256  # same mapping, same identity
    assert from_file.info()["label_map"]["source"] == str(path)


def test_builtin_mapping_for_j_hartmann():
    mapping, source = resolve_mapping(LABELS, DEFAULT_MODEL)
    assert source == f"built-in for {DEFAULT_MODEL}"
    assert mapping == {
        "anger": "anger",
        "disgust": "disgust",
        "fear": "fear",
        "joy": "happiness",
        "neutral": "none",
        "sadness": "sadness",
        "surprise": "surprise",
    }


@pytest.mark.parametrize(
    ("labels", "label_map", "message"),
    [
        (["LABEL_0", "LABEL_1"], None, r"model label 'LABEL_0' has no emotion .*give --label-map"),
        (LABELS, {**BUILTIN_MAPS[DEFAULT_MODEL], "love": "happiness"}, r"names 'love', which the model does not"),
        (LABELS, {**BUILTIN_MAPS[DEFAULT_MODEL], "joy": "joy"}, r"maps 'joy' to 'joy'; expected one of"),
        (LABELS, {"anger": "anger"}, r"model label 'disgust' has no emotion"),
        (["neutral"], None, r"maps no model label to any of"),
        (LABELS, "/no/such/map.json", r"--label-map /no/such/map.json: no such file"),
        (LABELS, "{not json", r"bad JSON"),
    ],
)
def test_bad_mappings_are_one_line_user_errors(labels, label_map, message):
    with pytest.raises(UserError, match=message) as caught:
        resolve_mapping(labels, "some/model", label_map)
    assert "\n" not in str(caught.value)


def test_unknown_model_label_when_loading(tmp_path):
    path = build_tiny_classifier(tmp_path / "love", labels=[*LABELS, "love"])
    with pytest.raises(UserError, match=r"model label 'love' has no emotion") as caught:
        load_scorer("hf-classifier", options={"model": str(path)})
    assert "\n" not in str(caught.value)


def test_only_safetensors_are_loaded(model_dir, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(model_dir, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights"):
        load_scorer("hf-classifier", options={"model": str(copy)})
    with pytest.raises(UserError, match="no such directory"):
        load_scorer("hf-classifier", options={"model": str(tmp_path / "missing")})


def test_options_are_checked():
    with pytest.raises(UserError, match=r"--judge-url does not apply to scorer hf-classifier"):
        load_scorer("hf-classifier", options={"judge_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(UserError, match=r"--scorer-model does not apply to scorer test-keywords"):
        load_scorer("test-keywords", options={"model": "x"})
    load_scorer("test-keywords", options={"model": None})  # unset options are fine


def test_cli_score_with_hf_classifier(model_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"text": t, "target_emotion": "anger"}) + "\n" for t in TEXTS[:2]), encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    argv = ["score", str(source), "-o", str(out), "--scorer", "hf-classifier", "--scorer-model", str(model_dir)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 2 and summary["scorer"] == "hf-classifier" and summary["failed"] == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(len(row["probs"]) == 7 for row in rows)
