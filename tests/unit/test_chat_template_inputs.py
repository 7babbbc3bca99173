"""Fixed chat-template inputs (a `date_string` instead of the day's date), recorded in results and in the run
identity without breaking published run dirs, and the refusal of a method config that turns the KV cache off."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from locations import FAST_PROMPTING, REPO

from sev_bench import prompts
from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt
from sev_bench.cli import main
from sev_bench.compare import warnings_for
from sev_bench.errors import UserError
from sev_bench.leaderboard import find_run_dirs, is_own_decoding, validate_run
from sev_bench.methods import resolve_method
from sev_bench.models import load_model
from sev_bench.prompts import CHAT_TEMPLATE_KWARGS
from sev_bench.results import RunDir
from sev_bench.runner import _check_legacy_template, default_output_dir

# The part of a Llama-3.x chat template that dates the prompt (the real one also falls back to strftime_now).
LLAMA3_LIKE = (
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
    "{%- endif %}{%- endif %}<|system|>Cutting Knowledge Date: December 2023\nToday Date: {{ date_string }}\n\n"
    "{{ messages[0]['content'] }}<|eot|>{% for m in messages[1:] %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-qwen2")


@pytest.fixture
def llama3_tokenizer(tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = LLAMA3_LIKE
    return tokenizer


def test_render_prompt_passes_the_fixed_date_not_the_days(llama3_tokenizer):
    chat = prompts.chat(prompts.NEUTRAL_SYSTEM, "scene", "event")
    today = llama3_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert datetime.date.today().strftime("%d %b %Y") in today  # what the template does on its own
    rendered = render_prompt(llama3_tokenizer, chat)
    assert "Today Date: 26 Jul 2024\n" in rendered and CHAT_TEMPLATE_KWARGS == {"date_string": "26 Jul 2024"}
    assert rendered == today.replace(datetime.date.today().strftime("%d %b %Y"), "26 Jul 2024")


def test_chatml_templates_render_as_before(tiny):
    rendered = render_prompt(tiny.tokenizer, prompts.chat("SYS", "scene", "event"))
    assert rendered == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nscene\nevent<|im_end|>\n<|im_start|>assistant\n"
    )


def test_every_chat_template_call_goes_through_render_prompt():
    """Backends (HF, vLLM), discovery, the fluency gate and the benchmarks all render with `render_prompt`:
    it is the only place in the package that calls `apply_chat_template`."""
    calls = []
    for folder in ("sev_bench", "benchmarks", "tasks", "metrics"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\.apply_chat_template\(", line):
                    calls.append(f"{path.relative_to(REPO).as_posix()}:{number}")
    assert len(calls) == 1 and calls[0].startswith("sev_bench/backends/hf.py:"), calls
    source = (REPO / "sev_bench" / "backends" / "hf.py").read_text(encoding="utf-8")
    assert "add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS)" in source


def test_lm_eval_task_refuses_model_args_without_the_fixed_inputs():
    spec = importlib.util.spec_from_file_location("sev_task_utils", REPO / "tasks" / "sev" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    utils.check_chat_template_args(dict(CHAT_TEMPLATE_KWARGS))
    for given in (None, {}, {"date_string": "02 Dec 2026"}):
        with pytest.raises(ValueError, match='"chat_template_args": {"date_string":"26 Jul 2024"}'):
            utils.check_chat_template_args(given)


# -- results and identity --------------------------------------------------------------------------------


def test_a_run_records_the_inputs_in_its_spec_and_identity(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--method", str(FAST_PROMPTING), "--model", "tiny-random-qwen2"]
    argv += ["--scorer", "test-keywords", "--limit", "6", "--threads", "1", "--no-progress", "--output-dir", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["generation"]["chat_template_kwargs"] == CHAT_TEMPLATE_KWARGS
    assert json.loads((out / "run.json").read_text())["chat_template_kwargs"] == CHAT_TEMPLATE_KWARGS
    # a record, not a decoding setting: the benchmark's decoding with it is not the method's own
    generation = {"do_sample": False, "max_new_tokens": 100, "chat_template_sha256": "c" * 64}
    assert not is_own_decoding({**generation, "chat_template_kwargs": CHAT_TEMPLATE_KWARGS})
    other = copy.deepcopy(results)
    other["spec"]["generation"]["chat_template_kwargs"] = {"date_string": "02 Dec 2026"}
    assert warnings_for(results, other) == [
        'chat template inputs differ: {"date_string": "26 Jul 2024"} vs {"date_string": "02 Dec 2026"}'
    ]


def test_published_run_dirs_still_resume_and_stay_on_the_board(tmp_path):
    """Committed run.json files made before the new identity key are accepted with it (resume) and left
    untouched, with their default dir name unchanged; those made after carry it; the board reads both."""
    root = REPO / "leaderboards"
    run_dirs = find_run_dirs(root) + [root / "ci" / "prompting-smollm2"]
    assert len(run_dirs) >= 13
    legacy = 0
    for source in run_dirs:
        copy_dir = tmp_path / source.relative_to(root)
        shutil.copytree(source, copy_dir)
        before = (copy_dir / "run.json").read_bytes()
        identity = json.loads(before)
        now = {**identity, "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS)}
        run_dir = RunDir(copy_dir)
        run_dir.claim(now)
        if "chat_template_kwargs" not in identity:
            legacy += 1
            assert run_dir.legacy_keys == ["chat_template_kwargs"]
            assert default_output_dir(now) == default_output_dir(identity)
        else:
            assert identity["chat_template_kwargs"] == CHAT_TEMPLATE_KWARGS and run_dir.legacy_keys == []
        assert (copy_dir / "run.json").read_bytes() == before
        # another difference is still refused, and named
        with pytest.raises(UserError, match=r"differs in: seed\)"):
            RunDir(copy_dir).claim({**now, "seed": identity["seed"] + 1})
        if source.parent.name != "ci":
            assert validate_run(copy_dir, tmp_path).samples_checked
    assert legacy >= 10  # the runs made before the key existed


def test_legacy_run_dir_without_samples_starts_afresh_and_with_a_dated_template_is_refused(
    tmp_path, tiny, llama3_tokenizer
):
    identity = {"method": {"name": "none"}, "model": "m", "split": "test", "scorer": {"id": "s"}, "seed": 1}
    now = {**identity, "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS)}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps(identity))
    run_dir = RunDir(empty)
    run_dir.claim(now)
    assert run_dir.legacy_keys == [] and json.loads((empty / "run.json").read_text()) == now

    started = tmp_path / "started"
    started.mkdir()
    (started / "run.json").write_text(json.dumps(identity))
    (started / "samples.jsonl").write_text(json.dumps({"id": "a"}) + "\n")
    run_dir = RunDir(started)
    run_dir.claim(now)
    _check_legacy_template(run_dir, tiny.tokenizer, resuming=True)  # ChatML reads no date: resumes
    _check_legacy_template(run_dir, llama3_tokenizer, resuming=False)  # nothing left to generate
    with pytest.raises(UserError, match="fixed the chat template's date_string"):
        _check_legacy_template(run_dir, llama3_tokenizer, resuming=True)


# -- the KV cache stays on -------------------------------------------------------------------------------


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "method.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "overrides", "where"),
    [
        ("method: steering\ngeneration:\n  use_cache: false\n", None, "generation.use_cache"),
        ("method: steering\nparams:\n  use_cache: false\n", None, "params.use_cache"),
        ("method: circuit\nuse_cache: false\n", None, ": use_cache"),
        ("method: prompting\n", ["use_cache=false"], "--set use_cache"),
        ("method: none\ngeneration:\n  use_cache: 0\n", None, "generation.use_cache"),
    ],
)
def test_a_config_that_turns_the_kv_cache_off_is_refused(tmp_path, text, overrides, where):
    with pytest.raises(UserError) as caught:
        resolve_method(_yaml(tmp_path, text), overrides)
    message = str(caught.value)
    assert where in message and "refused" in message and "KV cache" in message and "\n" not in message


def test_use_cache_true_changes_nothing(tmp_path):
    plain = resolve_method(_yaml(tmp_path, "method: steering\n"))
    explicit = resolve_method(_yaml(tmp_path, "method: steering\ngeneration:\n  use_cache: true\n"), ["use_cache=true"])
    assert explicit.config_hash == plain.config_hash and explicit.generation == GenerationConfig()


def test_cli_refuses_cache_off_with_one_line_and_exit_2(tmp_path, capsys):
    method = _yaml(tmp_path, "method: steering\ngeneration:\n  use_cache: false\n")
    argv = ["run", "--method", method, "--model", "tiny-random-qwen2", "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use_cache=False is refused" in err
    assert not (tmp_path / "out").exists()


def test_generation_keeps_the_cache_on_whatever_the_model_config_says(tiny, monkeypatch):
    seen = []
    real = tiny.model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs.get("use_cache"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny.model.generation_config, "use_cache", False)
    monkeypatch.setattr(tiny.model, "generate", recording)
    generator = HFGenerator(tiny, batch_size=2, config=GenerationConfig(max_new_tokens=4))
    generator.generate([prompts.chat("SYS", "scene", "event")] * 2)
    assert seen == [True]
