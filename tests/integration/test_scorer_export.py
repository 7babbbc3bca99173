"""`sev-bench scorer export`, `data export --with-scorer` and the `hf-classifier` round trip, on a scorer
trained for a few steps (mechanics; the shipped figures come from the fully trained default)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sev_bench.cli import main
from sev_bench.scoring import load_scorer
from sev_bench.scoring.emotion_classifier import LABELS, NAME, model_sha256, train

PUBLISHED_RUN = "leaderboards/smollm2-135m/prompting-test720"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sev_data_dir):
    return train(tmp_path_factory.mktemp("tiny") / NAME, sev_data_dir, epochs=1, max_rows=48, progress=False)


@pytest.fixture
def tiny_default(tiny_model, tmp_path, monkeypatch):
    """A cache whose default scorer is the tiny model."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_model, cache / "scorers" / NAME)
    monkeypatch.setenv("SEV_BENCH_CACHE", str(cache))
    return load_scorer(NAME, verbose=False)


def test_export_is_a_stock_pipeline_model_with_the_same_probabilities(tiny_default, tmp_path, capsys):
    from transformers import pipeline

    out = tmp_path / "export"
    assert main(["scorer", "export", str(out)]) == 0
    assert model_sha256(out) == tiny_default.sha256  # the export keeps the scorer's identity
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    assert config["architectures"] == ["BertForSequenceClassification"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "GoEmotions" in card and tiny_default.sha256 in card
    texts = [
        "I can't believe they lost my luggage again!",
        "The form is due on Friday.",
        "That smell made me gag.",
        "What? She's moving to Japan?",
        "",
    ]
    native = tiny_default.predict_proba(texts)
    classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    stock = np.array([[{d["label"]: d["score"] for d in row}[label] for label in LABELS] for row in classify(texts)])
    assert np.abs(stock - native).max() < 1e-5
    assert main(["scorer", "export", str(out)]) == 2  # an existing export is never overwritten
    assert "not empty" in capsys.readouterr().err


def test_other_scorers_are_refused_with_a_reason(tmp_path, capsys):
    assert main(["scorer", "export", str(tmp_path / "x"), "--scorer", "test-keywords"]) == 2
    assert "cannot be exported" in capsys.readouterr().err


def test_hf_classifier_on_the_export_reproduces_the_native_verdicts(tiny_default, tmp_path):
    export = tmp_path / "export"
    assert main(["scorer", "export", str(export)]) == 0
    native, stock = tmp_path / "native", tmp_path / "stock"
    assert main(["rescore", PUBLISHED_RUN, "--scorer", NAME, "--output-dir", str(native), "--no-progress"]) == 0
    assert (
        main(
            ["rescore", PUBLISHED_RUN, "--scorer", "hf-classifier", "--scorer-model", str(export)]
            + ["--output-dir", str(stock), "--no-progress"]
        )
        == 0
    )

    def verdicts(run):
        rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        return {r["id"]: (r["predicted_emotion"], r["correct"]) for r in rows}

    assert verdicts(native) == verdicts(stock) and len(verdicts(native)) == 720
    a = json.loads((native / "results.json").read_text())["metrics"]["accuracy"]
    b = json.loads((stock / "results.json").read_text())["metrics"]["accuracy"]
    assert a == b


def test_dataset_and_scorer_export_together(tiny_default, tmp_path):
    out = tmp_path / "sev"
    assert main(["data", "export", str(out), "--with-scorer"]) == 0
    dataset_card = (out / "README.md").read_text()
    assert "## Scoring replies" in dataset_card and "scorer/README.md" in dataset_card
    assert tiny_default.sha256 in dataset_card
    assert "../README.md" in (out / "scorer" / "README.md").read_text()  # the scorer's card links the dataset
    assert model_sha256(out / "scorer") == tiny_default.sha256
