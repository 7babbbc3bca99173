"""`sev-bench scorer eval --output-dir/--stress`: the confusion-matrix PNG and the stress sets."""

from __future__ import annotations

import json

import pytest
from keyword_scorer import KeywordScorer

from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS
from sev_bench.scoring.stress import (
    OFF_TOPIC,
    _repeat_first_sentence,
    _truncate,
    build_stress_sets,
    evaluate_stress,
    format_stress,
)


def test_text_transformations():
    reply = "I am furious about this. They ignored every request I made. Unacceptable!"
    assert _truncate(reply) == "I am furious"  # a quarter of 12 words, at least 3
    looped = _repeat_first_sentence(reply)
    assert looped.startswith("I am furious about this. I am furious about this.")
    assert len(looped.split()) >= len(reply.split())
    assert _repeat_first_sentence("no sentence end here") == "no sentence end here"


def test_stress_sets_are_deterministic_and_balanced(sev_data_dir):
    sets = build_stress_sets(sev_data_dir, per_set=60, seed=3)
    assert sets == build_stress_sets(sev_data_dir, per_set=60, seed=3)
    assert sets != build_stress_sets(sev_data_dir, per_set=60, seed=4)
    control = sets["control"]
    assert len(control) == 60 and all(sum(i["target"] == e for i in control) == 10 for e in EMOTIONS)
    # truncated and repeated are made from the control replies, item by item
    for name in ("truncated", "repeated"):
        assert [i["target"] for i in sets[name]] == [i["target"] for i in control]
    assert all(len(t["text"].split()) < len(c["text"].split()) for t, c in zip(sets["truncated"], control))
    assert all(i["target"] is None for i in sets["neutral"] + sets["off-topic"])
    assert len(sets["neutral"]) == 60 and len(sets["off-topic"]) == len(OFF_TOPIC)


def test_run_replies_split_by_the_fluency_gate(tmp_path, sev_data_dir):
    run_dir = tmp_path / "steered"
    run_dir.mkdir()
    samples = [
        {"completion": "so angry angry angry angry", "target_emotion": "anger", "fluency": {"fluent": False}},
        {"completion": "What a wonderful day, I am glad.", "target_emotion": "happiness", "fluency": {"fluent": True}},
        {"completion": "Well.", "target_emotion": "fear", "fluency": {"fluent": True}},
    ]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (run_dir / "run.json").write_text(json.dumps({"method": "steering", "split": "dev"}))
    sets = build_stress_sets(sev_data_dir, runs=[run_dir], per_set=12)
    assert len(sets["run:steered (fluent)"]) == 2 and len(sets["run:steered (non-fluent)"]) == 1
    report = evaluate_stress(KeywordScorer(), sets)
    assert report["sets"]["run:steered (non-fluent)"]["hit_rate"] == 1.0  # the keyword scorer is fooled
    assert report["sets"]["run:steered (fluent)"]["hit_rate"] == 0.5
    neutral = report["sets"]["neutral"]
    assert neutral["hit_rate"] is None and abs(sum(neutral["predicted_share"].values()) - 1) < 1e-3
    table = format_stress(report)
    assert "| run:steered (non-fluent) | 1 | 100.0 |" in table
    old_run = tmp_path / "old"
    old_run.mkdir()
    (old_run / "samples.jsonl").write_text(json.dumps({"completion": "ok", "target_emotion": "fear"}) + "\n")
    (old_run / "run.json").write_text(json.dumps({"method": "none", "split": "dev"}))
    assert len(build_stress_sets(sev_data_dir, runs=[old_run], per_set=12)["run:old (no fluency records)"]) == 1
    with pytest.raises(UserError, match="no samples.jsonl"):
        build_stress_sets(sev_data_dir, runs=[tmp_path / "missing"])


def test_stress_sets_never_touch_the_test_split(tmp_path, sev_data_dir):
    from sev_bench import data

    sets = build_stress_sets(sev_data_dir, per_set=600)
    test_texts = {row["gen_text"] for row in data.load_reference("test", sev_data_dir)}
    skeletons = data.load_skeletons(sev_data_dir)
    test_texts |= {s["scenario"] for s in skeletons["test"]} | {s["event"]["neutral"] for s in skeletons["test"]}
    dev_texts = {s["scenario"] for s in skeletons["dev"]} | {s["event"]["neutral"] for s in skeletons["dev"]}
    assert not test_texts & {item["text"] for items in sets.values() for item in items}
    assert {item["text"] for item in sets["neutral"]} <= dev_texts
    test_run = tmp_path / "steering-test"
    test_run.mkdir()
    (test_run / "samples.jsonl").write_text(json.dumps({"completion": "ok", "target_emotion": "fear"}) + "\n")
    (test_run / "run.json").write_text(json.dumps({"method": "steering", "split": "test"}))
    with pytest.raises(UserError, match="dev-split runs only"):
        build_stress_sets(sev_data_dir, runs=[test_run])


def test_scorer_eval_writes_the_confusion_png_and_stress_report(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["scorer", "eval", "--scorer", "test-keywords", "--output-dir", str(out), "--stress"]) == 0
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "agreement.json").read_text())
    matrix = report["judge_accepted"]["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == report["judge_accepted"]["n"]
    assert "Scorer test-keywords" in (out / "report.md").read_text()
    stress = json.loads((out / "stress.json").read_text())
    assert set(stress["sets"]) == {"control", "truncated", "repeated", "neutral", "off-topic"}
    assert "Stress sets for scorer test-keywords" in capsys.readouterr().out


def test_scorer_eval_refuses_a_missing_stress_run(tmp_path, capsys):
    assert main(["scorer", "eval", "--scorer", "test-keywords", "--stress-run", str(tmp_path / "nope")]) == 2
    assert "no samples.jsonl there" in capsys.readouterr().err
