"""`--method NAME` / `--method path.yaml` -> a validated method instance and its generation settings.

A method config is a small YAML file:

    method: prompting          # the registered implementation
    description: ...           # optional, shown by `sev-bench methods`
    params: {...}              # hyper-parameters, validated against the implementation's `params`
    generation: {...}          # decoding settings (greedy always): max_new_tokens, min_new_tokens,
                               # repetition_penalty, no_repeat_ngram_size

`use_cache: false` (in `generation`, `params`, at the top level or as `--set use_cache=false`) is refused:
generation keeps the KV cache on, because interventions tell prompt and generated positions apart by it.

`NAME` is looked up as `./methods/NAME.yaml` (your own configs), then in the configs shipped with
sev-bench (inside the wheel, or `methods/` of a source checkout), then as a registered method name
with its defaults (third-party plug-ins).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..backends.hf import DEFAULT_MAX_NEW_TOKENS, GenerationConfig
from ..errors import UserError
from .base import METHODS, ControlMethod

GENERATION_KEYS = {
    "max_new_tokens": int,
    "min_new_tokens": int,
    "repetition_penalty": float,
    "no_repeat_ngram_size": int,
}
CONFIG_KEYS = {"method", "description", "params", "generation"}


@dataclass
class MethodConfig:
    name: str  # the config's name (file stem, or the registered name)
    method: ControlMethod  # the instance with validated params
    generation: GenerationConfig
    description: str
    source: str  # where the config came from ("builtin:prompting.yaml", a path, or "registry")
    generation_declared: bool = False  # the config chose decoding settings other than the benchmark's

    @property
    def decoding_policy(self) -> str:
        """ "benchmark-default" (greedy, max_new_tokens 100, nothing else: the same for every method) or
        "method-declared" (the config asked for its own, e.g. a repetition penalty)."""
        return "method-declared" if self.generation_declared else "benchmark-default"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "implementation": self.method.name,
            "kind": self.method.kind,
            "params": dict(self.method.params),
            "generation": self.generation.as_dict(),
            "source": self.source,
        }

    @property
    def config_hash(self) -> str:
        payload = json.dumps({k: v for k, v in self.as_dict().items() if k != "source"}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _shipped_config_dirs() -> list[Path]:
    dirs = []
    packaged = resources.files("sev_bench").joinpath("builtin_methods")
    if packaged.is_dir():  # installed from a wheel
        dirs.append(Path(str(packaged)))
    checkout = Path(__file__).resolve().parents[2] / "methods"
    if checkout.is_dir():  # a source checkout / editable install
        dirs.append(checkout)
    return dirs


def available_configs() -> dict[str, Path]:
    """Config name -> file, user configs in ./methods shadowing shipped ones."""
    found: dict[str, Path] = {}
    for directory in [Path.cwd() / "methods", *_shipped_config_dirs()]:
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"method config {path} is unreadable ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"method config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise UserError(f"method config {path} must be a mapping with a 'method' key naming an implementation")
    if "use_cache" in data:
        _refuse_cache_off(data["use_cache"], f"method config {path}: use_cache")
        data = {k: v for k, v in data.items() if k != "use_cache"}
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"method config {path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(CONFIG_KEYS))}")
    return data


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value")
        overrides[key.strip()] = value
    return overrides


def _refuse_cache_off(value: Any, where: str) -> None:
    """`use_cache: false` turns the KV cache off; generation must keep it (`true`, the default, is accepted
    and changes nothing)."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")):
        return
    raise UserError(
        f"{where}: use_cache={value!r} is refused: generation keeps the KV cache on, because interventions tell "
        "prompt and generated positions apart by it"
    )


def _generation(settings: dict | None, where: str) -> GenerationConfig:
    settings = dict(settings or {})
    if "use_cache" in settings:
        _refuse_cache_off(settings.pop("use_cache"), f"{where}: generation.use_cache")
    for key, value in settings.items():
        expected = GENERATION_KEYS.get(key)
        if expected is None:
            raise UserError(f"{where}: unknown generation key {key!r}; allowed: {', '.join(GENERATION_KEYS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise UserError(f"{where}: generation.{key}={value!r}: expected a finite {expected.__name__}")
        if expected is int and value != int(value):
            raise UserError(f"{where}: generation.{key}={value!r}: expected {expected.__name__}")
        settings[key] = expected(value)
    max_new_tokens = settings.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if max_new_tokens < 1:
        raise UserError(f"{where}: generation.max_new_tokens must be >= 1")
    return GenerationConfig(max_new_tokens=max_new_tokens, extra=settings)


def resolve_method(name_or_path: str, overrides: list[str] | None = None) -> MethodConfig:
    """The method a `--method` value names, with `--set key=value` overrides applied and validated."""
    cli_overrides = parse_overrides(overrides)
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(f"--method {name_or_path}: no such config file")
        data, source, name = _read_yaml(path), str(path), path.stem
    elif name_or_path in available_configs():
        config_path = available_configs()[name_or_path]
        data, name = _read_yaml(config_path), name_or_path
        shipped = config_path.parent.resolve() in [d.resolve() for d in _shipped_config_dirs()]
        source = f"builtin:{config_path.name}" if shipped else str(config_path)
    else:
        try:
            METHODS.get(name_or_path)
        except UserError:
            known = sorted(set(available_configs()) | set(METHODS.names()))
            raise UserError(f"unknown method {name_or_path!r}; known: {', '.join(known)}") from None
        data, source, name = {"method": name_or_path}, "registry", name_or_path

    implementation = METHODS.get(data["method"])
    yaml_params = data.get("params") or {}
    if not isinstance(yaml_params, dict):
        raise UserError(f"method config {source}: 'params' must be a mapping")
    # the KV cache cannot be turned off from a config's params or a --set either
    if "use_cache" in yaml_params and "use_cache" not in implementation.params:
        _refuse_cache_off(yaml_params["use_cache"], f"method config {source}: params.use_cache")
        yaml_params = {k: v for k, v in yaml_params.items() if k != "use_cache"}
    if "use_cache" in cli_overrides and "use_cache" not in implementation.params:
        _refuse_cache_off(cli_overrides.pop("use_cache"), "--set use_cache")
    method = implementation(**{**yaml_params, **cli_overrides})
    generation = _generation(data.get("generation"), f"method config {source}")
    description = data.get("description") or implementation.description
    declared = generation != GenerationConfig()
    return MethodConfig(name, method, generation, description, source, declared)
