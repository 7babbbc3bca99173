"""Generation engines by name: `hf` (batched transformers, hookable) and `vllm` (unsteered baselines only).

Each engine is a `Generator` (`sev_bench.backends.base`), registered here as "module:Class" and imported
only when it is asked for. `make_generator(name, model_spec, ...)` loads one; `check_backend` says, before
anything loads, whether a method can run on it; `backend_info(generator)` is what a run records under
`spec.backend`.
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Generator, GeneratorSettings

# backend name -> "module:Class" of its Generator, imported on first use
_GENERATORS: dict[str, str] = {}


def register_generator(name: str, target: str) -> None:
    """Make `--backend name` load the Generator class `target` ("package.module:Class")."""
    module, sep, attribute = target.partition(":")
    if not (sep and module and attribute):
        raise ValueError(f"backend {name!r}: expected 'module:Class', got {target!r}")
    _GENERATORS[name] = target


register_generator("hf", "sev_bench.backends.hf:HFGenerator")
register_generator("vllm", "sev_bench.backends.vllm:VLLMGenerator")
BACKENDS = tuple(_GENERATORS)


def generator_class(name: str) -> type[Generator]:
    """The Generator class of backend `name` (its module imported now); a one-line UserError if unknown."""
    target = _GENERATORS.get(name)
    if target is None:
        raise UserError(f"unknown backend {name!r}; expected one of {', '.join(_GENERATORS)}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def check_backend(name: str, method) -> None:
    """A one-line UserError when `method` (a ControlMethod) cannot run on backend `name`."""
    engine = generator_class(name)
    if method.changes_activations and not engine.supports_interventions:
        raise UserError(
            f"method {method.name!r} applies interventions ({method.kind}), which the {name} backend cannot run "
            "(no forward hooks there); use --backend hf"
        )
    if name not in method.backends:
        raise UserError(
            f"method {method.name!r} does not run on the {name} backend "
            f"(it declares: {', '.join(sorted(method.backends))})"
        )
    engine.check_installed()  # before the data, the scorer or the model load


def make_generator(
    name: str,
    model_spec: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    config=None,
    seed: int = 0,
    threads: int | None = None,
) -> Generator:
    """Load `model_spec` (alias, local dir, GGUF file or hub id) for backend `name`. `threads` (CPU only):
    torch's intra-op threads for hf (the caller sets them), the cores vLLM's CPU worker binds to for vllm."""
    settings = GeneratorSettings(dtype, device, batch_size, config, seed, threads)
    return generator_class(name).load(model_spec, settings)


def backend_info(generator: Generator) -> dict:
    """`spec.backend` of a run: the engine's name, version and settings."""
    return generator.info()
