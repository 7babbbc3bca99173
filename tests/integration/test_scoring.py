"""Scorers: the minilm-probe (trained once for this module in a temporary cache), agreement with the
paper's judge on the test split, and JSONL scoring with its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sev_bench.errors import UserError
from sev_bench.hashing import file_sha256
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring import SCORERS, Scorer, load_scorer
from sev_bench.scoring.agreement import evaluate_agreement, format_agreement
from sev_bench.scoring.files import score_jsonl
from sev_bench.scoring.minilm_probe import METADATA_KEY, MiniLMProbe, default_path, train_probe


class KeywordScorer(Scorer):
    """A tiny stand-in: the emotion named first in the text gets probability 0.9 (else anger)."""

    name = "keyword-test"
    description = "test double"

    @classmethod
    def load(cls, data_dir=None, verbose=True):
        return cls()

    @property
    def sha256(self) -> str:
        return "0" * 64

    def predict_proba(self, texts):
        probs = np.full((len(texts), len(self.labels)), 0.1 / (len(self.labels) - 1))
        for i, text in enumerate(texts):
            hits = [j for j, label in enumerate(self.labels) if label in text]
            probs[i, hits[0] if hits else 0] = 0.9
        return probs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sev_bench_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEV_BENCH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def probe(cache, sev_data_dir) -> MiniLMProbe:
    path = train_probe(data_dir=sev_data_dir)
    assert path == default_path() and path.is_relative_to(cache)
    return MiniLMProbe.load(data_dir=sev_data_dir, verbose=False)  # loads the file just trained


@pytest.fixture(scope="module")
def report(probe, sev_data_dir) -> dict:
    return evaluate_agreement(probe, sev_data_dir)


def test_training_is_deterministic(probe, tmp_path, sev_data_dir):
    again = train_probe(data_dir=sev_data_dir, out_path=tmp_path / "again.safetensors", seed=0)
    assert file_sha256(again) == probe.sha256 == file_sha256(probe.weights_path)
    assert not [p for p in again.parent.iterdir() if p.name.endswith(".tmp")]


def test_saved_probe_is_plain_safetensors(probe):
    from safetensors import safe_open

    blob = probe.weights_path.read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    # Header + the two tensors' byte ranges are the whole file: there is room for nothing else.
    ends = [header[name]["data_offsets"][1] for name in ("coef", "intercept")]
    assert 8 + header_len + max(ends) == len(blob)
    with safe_open(str(probe.weights_path), framework="numpy") as handle:
        assert sorted(handle.keys()) == ["coef", "intercept"]
        assert handle.get_tensor("coef").shape == (6, 384)
        assert handle.get_tensor("intercept").shape == (6,)
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    assert metadata["labels"] == list(EMOTIONS)
    assert metadata["encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata["encoder"]["version"]
    training = metadata["training"]
    assert training["split"] == "train" and training["rows"] == 2281 and training["rows_read"] == 2880
    assert training["dev_skeletons_excluded"] == 32
    assert training["seed"] == 0 and 0.9 < training["train_accuracy"] <= 1
    assert set(training["files_sha256"]) == {
        "reference_generations/llama32_3b_prompting/sev/accepted.jsonl",
        "reference_generations/llama32_3b_prompting/sev/rejected.jsonl",
    }
    assert metadata["classifier"]["sklearn_version"]
    assert not [p for p in probe.weights_path.parent.iterdir() if p.suffix in {".pkl", ".pickle", ".joblib"}]


def test_load_trains_once_when_missing(probe, tmp_path, monkeypatch, capsys, sev_data_dir):
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path))
    fresh = load_scorer("minilm-probe", data_dir=sev_data_dir)
    assert "minilm-probe not trained yet" in capsys.readouterr().err
    assert fresh.weights_path == tmp_path / "scorers" / "minilm-probe" / "probe.safetensors"
    assert fresh.sha256 == probe.sha256
    load_scorer("minilm-probe", data_dir=sev_data_dir)
    assert capsys.readouterr().err == ""


def test_damaged_probe_file_is_a_user_error(tmp_path):
    bad = tmp_path / "probe.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(UserError, match="delete it to retrain"):
        MiniLMProbe.from_file(bad)


def test_score_fields(probe):
    texts = [
        "Are you kidding me? This is completely unacceptable, I am sick and tired of this incompetence!",
        "What a fantastic day! I am so happy and delighted for you!",
        "Oh no, I am terrified of what might happen next, what if everything goes wrong?",
    ]
    results = probe.score(texts, ["anger", "sadness", "fear"])
    assert [r["predicted_emotion"] for r in results] == ["anger", "happiness", "fear"]
    assert [r["correct"] for r in results] == [True, False, True]
    for result in results:
        assert set(result) == {"predicted_emotion", "probs", "correct"}
        assert list(result["probs"]) == list(EMOTIONS)
        assert abs(sum(result["probs"].values()) - 1) < 1e-5
        assert all(round(p, 6) == p for p in result["probs"].values())
        assert max(result["probs"], key=result["probs"].get) == result["predicted_emotion"]
    assert probe.predict_proba([]).shape == (0, 6)
    info = probe.info()
    assert info["id"] == "minilm-probe" and len(info["sha256"]) == 64 and info["labels"] == list(EMOTIONS)


def test_accuracy_and_agreement_with_the_judge(probe, report):
    overall = report["overall"]
    assert overall["n"] == 2880 and overall["n_judge_accepted"] == 2850
    assert overall["accuracy_on_judge_accepted"] > 0.85
    assert abs(overall["judge_accuracy"] - 2850 / 2880) < 1e-6
    cells = [overall, *report["by_emotion"].values(), *report["by_valence"].values()]
    for cell in cells:
        for key in ("judge_accuracy", "scorer_accuracy", "agreement", "accuracy_on_judge_accepted"):
            assert 0 <= cell[key] <= 1, (key, cell)
        assert cell["cohen_kappa"] is None or -1 <= cell["cohen_kappa"] <= 1
    assert isinstance(overall["cohen_kappa"], float)
    assert sum(report["by_emotion"][e]["n"] for e in EMOTIONS) == 2880

    confusion = report["judge_accepted"]["confusion"]
    assert confusion["rows"] == list(EMOTIONS) and confusion["columns"] == list(EMOTIONS)
    matrix = np.array(confusion["matrix"])
    assert matrix.shape == (6, 6) and matrix.sum() == 2850
    assert np.trace(matrix) / matrix.sum() == pytest.approx(overall["accuracy_on_judge_accepted"], abs=1e-6)
    for i, emotion in enumerate(EMOTIONS):
        assert report["judge_accepted"]["recall"][emotion] == pytest.approx(matrix[i, i] / matrix[i].sum())

    text = format_agreement(report)
    assert "overall" in text and "disgust" in text and probe.sha256[:12] in text

    stored = probe.info()["agreement"]
    assert stored["agreement"] == overall["agreement"] and stored["cohen_kappa"] == overall["cohen_kappa"]
    sidecar = probe.agreement_path
    sidecar.write_text(json.dumps({"f" * 64: stored}), encoding="utf-8")  # figures of other weights
    assert probe.info()["agreement"] is None
    probe.store_agreement(stored)
    assert probe.info()["agreement"] == stored


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_score_jsonl_happy_path(tmp_path):
    rows = [
        {"id": "a", "text": "so much happiness here", "target_emotion": "happiness"},
        {"id": "b", "text": "pure fear", "target_emotion": "anger"},
        {"id": "c", "text": "nothing in particular, ünïcode", "target_emotion": "anger"},
    ]
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in rows] + [""])
    out = tmp_path / "sub" / "out.jsonl"
    summary = score_jsonl(KeywordScorer(), source, out)
    assert summary["n"] == 3 and summary["correct"] == 2 and summary["accuracy"] == pytest.approx(2 / 3)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [w["id"] for w in written] == ["a", "b", "c"]
    assert [w["predicted_emotion"] for w in written] == ["happiness", "fear", "anger"]
    assert [w["correct"] for w in written] == [True, False, True]
    assert written[2]["text"] == rows[2]["text"] and list(written[0]["probs"]) == list(EMOTIONS)


def test_score_jsonl_custom_fields(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps({"reply": "sadness", "emotion": "sadness"})])
    summary = score_jsonl(KeywordScorer(), source, tmp_path / "out.jsonl", "reply", "emotion")
    assert summary["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, r"in\.jsonl: no such file"),
        (['{"text": "x", "target_emotion": "anger"}', "{not json"], r"in\.jsonl:2: bad JSON"),
        (['{"target_emotion": "anger"}'], r"in\.jsonl:1: missing field 'text'"),
        (['{"text": "x"}'], r"in\.jsonl:1: missing field 'target_emotion'"),
        (
            ['{"text": "x", "target_emotion": "joy"}'],
            r"in\.jsonl:1: 'target_emotion' is 'joy'; expected one of",
        ),
        (["[1, 2]"], r"in\.jsonl:1: got a JSON list"),
    ],
)
def test_score_jsonl_bad_input(tmp_path, lines, message):
    source = tmp_path / "in.jsonl"
    if lines is not None:
        write_lines(source, lines)
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as caught:
        score_jsonl(KeywordScorer(), source, out)
    assert "\n" not in str(caught.value)
    assert out.read_text(encoding="utf-8") == "previous\n"  # untouched, nothing half-written
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_scorer_is_a_user_error():
    assert "minilm-probe" in SCORERS.names()
    with pytest.raises(UserError, match="unknown scorer 'no-such-scorer'; known: .*minilm-probe"):
        load_scorer("no-such-scorer")


def test_score_checks_targets():
    with pytest.raises(UserError, match="not one of"):
        KeywordScorer().score(["x"], ["joy"])
    with pytest.raises(ValueError):
        KeywordScorer().score(["x", "y"], ["anger"])
