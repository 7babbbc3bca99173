"""The lm-evaluation-harness task `sev_prompting` (tasks/sev/): `lm_eval` runs it offline on a tiny model
saved to a local dir, sends the prompts sev-bench's HF backend sends, and its accuracy equals sev-bench's own
scoring of the same replies (overall and per valence)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from locations import REPO

from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt
from sev_bench.data import load_sev
from sev_bench.methods import resolve_method
from sev_bench.models import load_model
from sev_bench.prompts import CHAT_TEMPLATE_KWARGS, VALENCES
from sev_bench.scoring import load_scorer

pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra: pip install -e '.[dev]'")

LIMIT = 2  # docs per valence sub-task
SCORER = "minilm-probe"  # a registered scorer the lm_eval process can load (trained once into the cache)


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory, sev_data_dir):
    base = tmp_path_factory.mktemp("lm_eval")
    model_dir = base / "tiny-random-qwen2"
    loaded = load_model("tiny-random-qwen2")
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    load_scorer(SCORER, verbose=False)  # trains it into $SEV_BENCH_CACHE first if needed, for the subprocess
    out = base / "out"
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        # JSON: lm-eval's key=value form cannot carry a dict; chat_template_args gives sev-bench's fixed inputs
        json.dumps({"pretrained": str(model_dir), "dtype": "float32", "chat_template_args": CHAT_TEMPLATE_KWARGS}),
        "--include_path",
        str(REPO / "tasks"),
        "--tasks",
        "sev_prompting",
        "--apply_chat_template",
        "--limit",
        str(LIMIT),
        "--device",
        "cpu",
        "--batch_size",
        "1",
        "--log_samples",
        "--output_path",
        str(out),
        "--metadata",
        json.dumps({"scorer": SCORER}),
    ]
    env = {
        **os.environ,
        "SEV_BENCH_DATA_DIR": str(sev_data_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=base)
    assert done.returncode == 0, f"lm_eval failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (results_file,) = out.rglob("results_*.json")
    samples = {
        valence: [json.loads(line) for line in next(out.rglob(f"samples_sev_prompting_{valence}_*.jsonl")).open()]
        for valence in VALENCES
    }
    return json.loads(results_file.read_text()), samples, model_dir


def test_lm_eval_accuracy_equals_sev_bench_scoring(lm_eval_run):
    results, samples, _ = lm_eval_run
    scorer = load_scorer(SCORER, verbose=False)
    all_correct = []
    for valence in VALENCES:
        rows = samples[valence]
        assert len(rows) == LIMIT and all(row["doc"]["valence"] == valence for row in rows)
        replies = [row["resps"][0][0] for row in rows]
        scores = scorer.score(replies, [row["doc"]["target_emotion"] for row in rows])
        correct = [float(score["correct"]) for score in scores]
        assert [row["acc"] for row in rows] == correct
        assert results["results"][f"sev_prompting_{valence}"]["acc,none"] == pytest.approx(sum(correct) / LIMIT)
        all_correct += correct
    overall = results["results"]["sev_prompting"]["acc,none"]
    assert overall == pytest.approx(sum(all_correct) / len(all_correct))


def test_lm_eval_sends_sev_bench_prompts_and_gets_its_replies(lm_eval_run):
    """The rendered prompt is the HF backend's, and the tiny model's greedy replies are the HF backend's."""
    _, samples, model_dir = lm_eval_run
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    method = resolve_method("prompting").method
    rows_by_id = {row["id"]: row for row in load_sev()["test"].to_list()}
    emotions = load_sev()["test"].features["target_emotion"].names
    docs = [row for valence in VALENCES for row in samples[valence]]
    conversations = []
    for doc in docs:
        row = dict(rows_by_id[doc["doc"]["id"]])
        row["target_emotion"] = emotions[row["target_emotion"]]
        messages = method.messages(row, row["target_emotion"])
        conversations.append(messages)
        assert doc["arguments"]["gen_args_0"]["arg_0"] == render_prompt(loaded.tokenizer, messages)
    replies = HFGenerator(loaded, batch_size=1, config=GenerationConfig(max_new_tokens=100)).generate(conversations)
    assert [doc["resps"][0][0] for doc in docs] == replies
