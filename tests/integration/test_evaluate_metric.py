"""The `evaluate` metric module in metrics/sev_accuracy/: `evaluate.load` reads it from the folder offline,
its figures equal the `metrics` block sev-bench published for real runs (accuracy and fluent accuracy:
overall, per valence, per emotion, per cell, with their Wilson intervals), and bad input fails clearly."""

from __future__ import annotations

import json
import math

import pytest
from locations import REPO

evaluate = pytest.importorskip("evaluate", reason="evaluate is in the dev extra: pip install -e '.[dev]'")

METRIC_DIR = REPO / "metrics" / "sev_accuracy"
# Published runs: two with fluency records (two models, two sizes), one without (2,880 rows, rescored).
RUNS = ["smollm2-135m/prompting-test720", "qwen2.5-coder-1.5b/circuit-test144", "smollm2-135m/none-test"]


@pytest.fixture(scope="module")
def sev_accuracy(tmp_path_factory):
    """The module loaded from its folder with the network off and every evaluate cache in a temporary dir."""
    base = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
            patch.setenv(variable, "1")
        patch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")
        # evaluate reads these at import time; set the module attributes it consults on each load.
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", base / "modules")
        module = evaluate.load(str(METRIC_DIR), cache_dir=str(base / "cache"))
    assert type(module).__module__.startswith("evaluate_modules.")  # imported from the copy in base/modules
    assert list((base / "modules").rglob("sev_accuracy.py"))
    return module


def load_run(name: str) -> tuple[dict, list[dict]]:
    run_dir = REPO / "leaderboards" / name
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    with (run_dir / "samples.jsonl").open(encoding="utf-8") as lines:
        samples = [json.loads(line) for line in lines if line.strip()]
    return results["metrics"], samples


def assert_same(ours, published, where: str = "") -> None:
    """Same keys in the same order, equal ints and None, floats within 1e-12."""
    if isinstance(published, dict):
        assert isinstance(ours, dict), where
        assert list(ours) == list(published), where
        for key in published:
            assert_same(ours[key], published[key], f"{where}.{key}")
    elif isinstance(published, list):
        assert isinstance(ours, list) and len(ours) == len(published), where
        for index, (a, b) in enumerate(zip(ours, published)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(published, float):
        assert isinstance(ours, float) and math.isclose(ours, published, rel_tol=0, abs_tol=1e-12), (
            where,
            ours,
            published,
        )
    else:
        assert ours == published and type(ours) is type(published), (where, ours, published)


@pytest.mark.parametrize("run", RUNS)
def test_metric_reproduces_published_run(sev_accuracy, run):
    metrics, samples = load_run(run)
    assert len(samples) == metrics["accuracy"]["overall"]["n"]
    has_fluency = "accuracy_fluent" in metrics
    inputs = {
        "predictions": [s["predicted_emotion"] for s in samples],
        "references": [s["target_emotion"] for s in samples],
        "valences": [s["valence"] for s in samples],
    }
    if has_fluency:
        inputs["fluent"] = [s["fluency"]["fluent"] for s in samples]
    result = sev_accuracy.compute(**inputs)

    assert_same(result["accuracy"], metrics["accuracy"], "accuracy")
    assert_same(result["predicted_share"], metrics["predicted_share"], "predicted_share")
    if has_fluency:
        assert_same(result["accuracy_fluent"], metrics["accuracy_fluent"], "accuracy_fluent")
        assert_same(result["fluent_share"], metrics["fluency"]["fluent_share"], "fluent_share")
    else:
        assert "accuracy_fluent" not in result and "fluent_share" not in result


def test_published_runs_cover_fluency(sev_accuracy):
    """At least one of the runs above has fluency records, so fluent accuracy is checked too; without the
    `fluent` input the metric gives no fluent figures (every published run now has fluency records)."""
    assert any("accuracy_fluent" in load_run(run)[0] for run in RUNS)
    _, samples = load_run(RUNS[0])
    result = sev_accuracy.compute(
        predictions=[s["predicted_emotion"] for s in samples],
        references=[s["target_emotion"] for s in samples],
        valences=[s["valence"] for s in samples],
    )
    assert "accuracy_fluent" not in result and "fluent_share" not in result


def test_add_batch_then_compute_equals_one_compute(sev_accuracy):
    metrics, samples = load_run(RUNS[1])
    for start in range(0, len(samples), 50):
        chunk = samples[start : start + 50]
        sev_accuracy.add_batch(
            predictions=[s["predicted_emotion"] for s in chunk],
            references=[s["target_emotion"] for s in chunk],
            valences=[s["valence"] for s in chunk],
        )
    result = sev_accuracy.compute(fluent=[s["fluency"]["fluent"] for s in samples])
    assert_same(result["accuracy"], metrics["accuracy"], "accuracy")
    assert_same(result["accuracy_fluent"], metrics["accuracy_fluent"], "accuracy_fluent")


GOOD = {
    "predictions": ["anger", "none", "fear"],
    "references": ["anger", "sadness", "fear"],
    "valences": ["positive", "neutral", "negative"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"predictions": ["anger", "joy", "fear"]}, r"unknown label in predictions: 'joy' at index 1; allowed: .*none"),
        ({"references": ["anger", "none", "fear"]}, r"unknown label in references: 'none' at index 1"),
        ({"valences": ["positive", "neutral", "mixed"]}, r"unknown label in valences: 'mixed' at index 2"),
        ({"valences": ["positive", "neutral"]}, r"Mismatch in the number of predictions \(3\) and valences \(2\)"),
        ({"references": ["anger"]}, r"Mismatch in the number of predictions \(3\) and references \(1\)"),
        ({"fluent": [True, False]}, r"length mismatch: 3 predictions but 2 fluent flags"),
        ({"fluent": [True, None, False]}, r"fluent must hold booleans: None at index 1"),
        ({"fluent": [True, "yes", False]}, r"fluent must hold booleans: 'yes' at index 1"),
        ({"predictions": [0, 1, 2]}, r"don't match the expected format"),
    ],
)
def test_bad_input_gives_a_clear_error(sev_accuracy, change, message):
    with pytest.raises(ValueError, match=message):
        sev_accuracy.compute(**{**GOOD, **change})


def test_missing_valences_is_named(sev_accuracy):
    with pytest.raises(ValueError, match=r"inputs are missing: \['valences'\]"):
        sev_accuracy.compute(predictions=GOOD["predictions"], references=GOOD["references"])


def test_small_example(sev_accuracy):
    result = sev_accuracy.compute(**GOOD, fluent=[True, True, False])
    assert result["accuracy"]["overall"] == {
        "n": 3,
        "correct": 2,
        "acc": 2 / 3,
        "ci95": pytest.approx([0.2076596, 0.9385081], abs=1e-6),
    }
    assert result["accuracy_fluent"]["overall"]["correct"] == 1
    assert list(result["accuracy"]["by_emotion"]) == ["anger", "sadness", "fear"]
    assert result["predicted_share"]["none"] == pytest.approx(1 / 3)
    assert result["fluent_share"] == pytest.approx(2 / 3)
