"""Methods: the protocol's prompts exactly, YAML configs, --set validation, the plug-in registry."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
from locations import REPO

from sev_bench.errors import UserError
from sev_bench.methods import METHODS, ControlMethod, Param, resolve_method

SAMPLE = {
    "scenario": "I completed the project presentation and submitted it to the team for review this afternoon",
    "event": "The team scheduled a follow-up meeting to discuss the presentation in detail next week.",
    "valence": "neutral",
    "target_emotion": "fear",
}


def test_prompting_sends_the_papers_system_prompt_and_user_turn_exactly():
    method = resolve_method("prompting").method
    assert method.messages(SAMPLE, "fear") == [
        {"role": "system", "content": "Always reply in fear.\nKeep the reply to at most two sentences."},
        {
            "role": "user",
            "content": "I completed the project presentation and submitted it to the team for review this "
            "afternoon\nThe team scheduled a follow-up meeting to discuss the presentation in detail next week.",
        },
    ]


def test_none_sends_the_neutral_prompt_whatever_the_target():
    method = resolve_method("none").method
    chats = {str(method.messages(SAMPLE, emotion)) for emotion in ("anger", "fear", "disgust")}
    assert len(chats) == 1
    assert method.messages(SAMPLE, "anger")[0] == {
        "role": "system",
        "content": "Keep the reply to at most two sentences.",
    }


def test_default_generation_is_the_protocols_greedy_100_tokens():
    config = resolve_method("prompting")
    assert config.generation.as_dict() == {"do_sample": False, "max_new_tokens": 100}
    assert config.source == "builtin:prompting.yaml"


def test_set_overrides_are_applied_and_validated():
    config = resolve_method("prompting", ["system_template=Be {emotion}."])
    assert config.method.messages(SAMPLE, "anger")[0]["content"] == "Be anger."
    assert config.config_hash != resolve_method("prompting").config_hash
    with pytest.raises(UserError, match="has no parameter 'alpha'.*system_template"):
        resolve_method("prompting", ["alpha=8"])
    with pytest.raises(UserError, match="expected key=value"):
        resolve_method("prompting", ["alpha"])


def test_param_types_are_coerced_and_checked():
    assert Param(float, 1.0).coerce("x", "2.5") == 2.5
    assert Param(int, 1).coerce("x", "3") == 3
    assert Param(bool, False).coerce("x", "yes") is True
    with pytest.raises(UserError, match="expected float"):
        Param(float, 1.0).coerce("x", "strong")
    with pytest.raises(UserError, match="expected int"):
        Param(int, 1).coerce("x", True)


def test_param_constraints_are_declared_and_checked_in_one_place():
    assert Param(str, "a", choices=("a", "b")).coerce("x", "b") == "b"
    with pytest.raises(UserError, match=r"x='c': expected one of a, b"):
        Param(str, "a", choices=("a", "b")).coerce("x", "c")
    with pytest.raises(UserError, match=r"x=-1: expected >= 0"):
        Param(int, 0, minimum=0).coerce("x", "-1")
    with pytest.raises(UserError, match=r"x=2.5: expected <= 1"):
        Param(float, 0.5, maximum=1).coerce("x", 2.5)
    assert Param(int, 0, minimum=0, maximum=9).constraint() == ">= 0 and <= 9"
    assert Param(str, "", help="a dir").describe("d", "here") == "d (str) = 'here' - a dir"
    for name, bad in (("accept", "some"), ("discovery_limit", "-1")):  # the shared discovery params
        for method in ("steering", "circuit"):
            with pytest.raises(UserError, match=name):
                resolve_method(method, [f"{name}={bad}"])


def test_methods_lists_each_parameter_with_its_constraint(capsys):
    from sev_bench.cli import main

    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "accept (str, one of all, scorer) = 'all'" in listed
    assert "discovery_limit (int, >= 0) = 0" in listed and "alpha (float) = 8.0" in listed


def test_a_plugin_that_only_names_its_kind_still_says_it_changes_activations():
    class Legacy(ControlMethod):
        name = "legacy"
        kind = "steer"

    assert Legacy.changes_activations and not Shout.changes_activations


def test_yaml_path_and_its_errors(tmp_path):
    good = tmp_path / "angry.yaml"
    good.write_text(
        "method: prompting\nparams:\n  system_template: 'Reply in {emotion}.'\ngeneration:\n  max_new_tokens: 7\n"
    )
    config = resolve_method(str(good))
    assert config.name == "angry" and config.generation.max_new_tokens == 7
    cases = {
        "bad.yaml": ("method: [unclosed", "not valid YAML"),
        "nomethod.yaml": ("params: {}", "'method' key"),
        "extra.yaml": ("method: none\nsteps: 3", "unknown key 'steps'"),
        "gen.yaml": ("method: none\ngeneration:\n  temperature: 0.7", "unknown generation key 'temperature'"),
        "impl.yaml": ("method: telepathy", "unknown method 'telepathy'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=message):
            resolve_method(str(tmp_path / name))
    with pytest.raises(UserError, match="no such config file"):
        resolve_method(str(tmp_path / "missing.yaml"))


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown method 'telepathy'; known: circuit, none, prompting, steering"):
        resolve_method("telepathy")


def test_user_configs_in_cwd_shadow_the_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "prompting.yaml").write_text("method: prompting\ngeneration:\n  max_new_tokens: 3\n")
    monkeypatch.chdir(tmp_path)
    config = resolve_method("prompting")
    assert config.generation.max_new_tokens == 3 and config.source.endswith("prompting.yaml")


class Shout(ControlMethod):
    name = "shout"
    description = "test plug-in"
    params = {"volume": Param(int, 11)}

    def messages(self, sample, target_emotion):
        return [{"role": "user", "content": sample["event"].upper()}]


def test_entry_point_plugins_register_lazily(monkeypatch):
    entry_point = metadata.EntryPoint(name="shout", value=f"{__name__}:Shout", group="sev_bench.methods")
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(
        "sev_bench.registry.metadata.entry_points",
        lambda group: [entry_point] if group == "sev_bench.methods" else [],
    )
    config = resolve_method("shout", ["volume=3"])
    assert config.source == "registry" and config.method.params == {"volume": 3}
    assert "shout" in METHODS.names()


def test_broken_plugin_fails_loudly(monkeypatch):
    entry_point = metadata.EntryPoint(name="broken", value="no_such_module:Thing", group="sev_bench.methods")
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr("sev_bench.registry.metadata.entry_points", lambda group: [entry_point])
    with pytest.raises(UserError, match="plug-in 'broken'.*failed to load"):
        METHODS.names()


def test_registry_refuses_non_methods_and_collisions():
    with pytest.raises(TypeError):
        METHODS.add("not-a-method", dict)
    with pytest.raises(ValueError, match="already registered"):
        METHODS.add("prompting", Shout)


def test_method_configs_ship_inside_the_wheel(tmp_path):
    """Build the wheel, unpack it alone on sys.path, and resolve the shipped configs from there."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("sev_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sev_bench/builtin_methods/prompting.yaml" in names and "sev_bench/builtin_methods/none.yaml" in names
    assert "sev_bench/schema/results.schema.json" in names
    assert "sev_bench/calibration/smollm2-135m.json" in names  # the fluency gate's per-model bounds ship too
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import sev_bench, sev_bench.methods as m; c = m.resolve_method('prompting'); "
        "print(sev_bench.__file__); print(c.source); print(sorted(m.available_configs()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, source, configs = result.stdout.splitlines()
    assert module_file.startswith(str(unpacked))
    assert (
        source == "builtin:prompting.yaml"
        and configs == "['circuit', 'none', 'prompting', 'steering', 'steering-authors']"
    )
