"""Generation engines: `hf` (batched transformers, hookable) and `vllm` (unsteered baselines only).

`make_generator(name, model_spec, ...)` builds either; both expose `generate(conversations, on_batch,
interventions)`, `loaded` (tokenizer + model, weightless on vLLM), `device`, `batch_size` and
`new_token_count`. `backend_info(generator)` is what a run records under `spec.backend`.
"""

from __future__ import annotations

from ..errors import UserError

BACKENDS = ("hf", "vllm")


def check_backend(name: str, method) -> None:
    """A one-line UserError when `method` (a ControlMethod) cannot run on backend `name`."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "vllm" and method.kind != "prompt":
        raise UserError(
            f"method {method.name!r} applies interventions ({method.kind}), which the vllm backend cannot run "
            "(no forward hooks there); use --backend hf"
        )
    if name not in method.backends:
        raise UserError(
            f"method {method.name!r} does not run on the {name} backend "
            f"(it declares: {', '.join(sorted(method.backends))})"
        )
    if name == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # before the data, the scorer or the model load
            from .vllm import require_vllm

            require_vllm()


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
):
    """Load `model_spec` (alias, local dir, GGUF file or hub id) for backend `name`. `threads` (CPU only):
    torch's intra-op threads for hf (the caller sets them), the cores vLLM's CPU worker binds to for vllm."""
    if name == "hf":
        from ..models import load_model
        from .hf import HFGenerator

        return HFGenerator(load_model(model_spec, dtype=dtype, device=device), batch_size, config)
    if name == "vllm":
        from .vllm import VLLMGenerator, load_model_meta, require_vllm

        require_vllm()  # before any model conversion
        from vllm.platforms import current_platform

        engine_device = "cuda" if current_platform.device_type == "cuda" else "cpu"
        if device not in ("auto", engine_device) and not (device.startswith("cuda") and engine_device == "cuda"):
            raise UserError(f"--device {device}: this vLLM build runs on {engine_device}")
        loaded, model_dir = load_model_meta(model_spec, dtype=dtype, device=engine_device)
        return VLLMGenerator(loaded, model_dir, batch_size, config, seed=seed, threads=threads)
    raise UserError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def backend_info(generator) -> dict:
    """`spec.backend` of a run: the engine's name, version and settings."""
    if hasattr(generator, "info"):
        return generator.info()
    return {"name": generator.name, "batch_size": generator.batch_size}
