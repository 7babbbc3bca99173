"""`minilm-finetuned`: deterministic training, safe round trip, seven labels, refusal of a damaged file.
Mechanics only (a few training steps on a sample of rows); its measured agreement is in the README."""

from __future__ import annotations

import numpy as np
import pytest

from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring.minilm_finetuned import LABELS, MiniLMFinetuned, train_finetuned, training_rows


def test_training_rows_hold_the_six_emotions_and_none_from_train_skeletons_only(sev_data_dir):
    from sev_bench import data

    texts, labels, described = training_rows(sev_data_dir)
    assert len(texts) == len(labels) and set(labels) == set(range(len(LABELS)))
    assert LABELS == (*EMOTIONS, "none")
    counts = described["rows_by_label"]
    skeletons = data.load_skeletons(sev_data_dir)
    assert counts["none"] == 2 * len(skeletons["train"])
    held_out = {s["scenario"] for s in skeletons["dev"] + skeletons["test"]}
    assert not held_out & set(texts)


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory, sev_data_dir):
    out = tmp_path_factory.mktemp("finetuned")
    first = train_finetuned(sev_data_dir, out / "a.safetensors", epochs=1, max_rows=40, progress=False)
    second = train_finetuned(sev_data_dir, out / "b.safetensors", epochs=1, max_rows=40, progress=False)
    return first, second


def test_training_is_deterministic(tiny_training):
    first, second = tiny_training
    assert first.read_bytes() == second.read_bytes()


def test_round_trip_and_probabilities(tiny_training):
    scorer = MiniLMFinetuned.from_file(tiny_training[0])
    texts = ["I am furious!", "The meeting is on Tuesday.", ""]
    probs = scorer.predict_proba(texts)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1)
    # input order is kept although batches are sorted by length
    assert np.allclose(scorer.predict_proba(texts[::-1]), probs[::-1], atol=1e-6)
    scored = scorer.score(texts, ["anger", "fear", "sadness"])
    assert all(s["predicted_emotion"] in LABELS for s in scored)
    assert scorer.info()["training"]["epochs"] == 1 and scorer.info()["labels"] == list(LABELS)
    with pytest.raises(UserError, match="not one of"):
        scorer.score(["x"], ["joy"])


def test_a_damaged_file_is_refused(tiny_training, tmp_path):
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(tiny_training[0].read_bytes()[:5000])
    with pytest.raises(UserError, match="not a valid minilm-finetuned file"):
        MiniLMFinetuned.from_file(damaged)
