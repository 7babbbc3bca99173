"""Batched greedy generation with Hugging Face transformers (the hookable backend).

Prompts are chat-templated with `add_generation_prompt=True`, left-padded, and generated in batches.
Within a call, prompts are sorted by length so that each batch carries little padding; replies come
back in the caller's order. On out-of-memory the batch size halves and the batch is retried.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..models import LoadedModel, load_model
from ..prompts import CHAT_TEMPLATE_KWARGS
from .base import Generator, GeneratorSettings

Messages = list[dict[str, str]]

DEFAULT_MAX_NEW_TOKENS = 100  # the protocol's


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; greedy always. Extra keys (e.g. `repetition_penalty`, `min_new_tokens`,
    `no_repeat_ngram_size`, which the paper's steering runs use) go to `model.generate` as they are."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens, **self.extra}


@dataclass
class Encoded:
    input_ids: object  # LongTensor [batch, seq], left-padded
    attention_mask: object  # LongTensor [batch, seq]


def render_prompt(tokenizer, messages: Messages) -> str:
    """The prompt text of a chat: the tokenizer's chat template with the generation prompt and the fixed
    template inputs (`prompts.CHAT_TEMPLATE_KWARGS`: no date that changes with the day it runs)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class HFGenerator(Generator):
    name = "hf"
    supports_interventions = True  # forward hooks (sev_bench.interventions), live for one batch at a time

    @classmethod
    def load(cls, model_spec: str, settings: GeneratorSettings) -> HFGenerator:
        """Load `model_spec` with transformers (torch's CPU threads are the caller's to set)."""
        loaded = load_model(model_spec, dtype=settings.dtype, device=settings.device)
        return cls(loaded, settings.batch_size, settings.config)

    def __init__(self, loaded: LoadedModel, batch_size: int = 16, config: GenerationConfig | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.loaded = loaded
        self.batch_size = batch_size
        self.config = config or GenerationConfig()
        self.new_token_count = 0  # generated tokens up to and including each reply's EOS (throughput)

    @property
    def device(self):
        return next(self.loaded.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> Encoded:
        tokenizer = self.loaded.tokenizer
        batch = tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left"
        )
        return Encoded(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))

    def _generate_batch(self, prompts: Sequence[str], interventions: Sequence = ()) -> list[str]:
        import torch

        from ..interventions import HookSession

        tokenizer = self.loaded.tokenizer
        encoded = self.encode(prompts)
        settings = self.config.as_dict()
        # The hooks live for this batch only, so callbacks between batches (scoring, perplexity) see
        # the unmodified model; without interventions no hook is registered at all.
        session = HookSession(self.loaded, interventions) if interventions else contextlib.nullcontext()
        with torch.inference_mode(), session:
            output = self.loaded.model.generate(
                input_ids=encoded.input_ids,
                attention_mask=encoded.attention_mask,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=settings_eos(self.loaded),
                temperature=None,
                top_p=None,
                top_k=None,
                **settings,
                # Always on, whatever the model's generation_config says: interventions tell the prompt
                # (a call that starts with an empty cache) from generated tokens by the KV cache.
                use_cache=True,
            )
        new_tokens = output[:, encoded.input_ids.shape[1] :]
        lengths, ended = _reply_lengths(new_tokens, settings_eos(self.loaded))
        self.new_token_count += sum(lengths)
        # Cut each reply before its EOS (and the padding after it): EOS tokens need not be "special".
        reply_tokens = [row[: length - stop] for row, length, stop in zip(new_tokens.tolist(), lengths, ended)]
        return tokenizer.batch_decode(reply_tokens, skip_special_tokens=True)

    def generate(
        self,
        conversations: Sequence[Messages],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        interventions: Sequence = (),
    ) -> list[str]:
        """Replies to `conversations`, in order. `on_batch(indices, replies)` is called after each
        batch (for progress and incremental saving). `interventions` (InterventionSpecs) apply to every
        row while it generates."""
        tokenizer = self.loaded.tokenizer
        prompts = [render_prompt(tokenizer, messages) for messages in conversations]
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        replies: list[str | None] = [None] * len(prompts)
        start = 0
        while start < len(order):
            indices = order[start : start + self.batch_size]
            try:
                batch_replies = self._generate_batch([prompts[i] for i in indices], interventions)
            except (RuntimeError, MemoryError) as exc:
                if not _is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                print(f"out of memory; retrying with --batch-size {self.batch_size}", flush=True)
                _free_cached_memory()
                continue
            for i, reply in zip(indices, batch_replies):
                replies[i] = reply
            if on_batch is not None:
                on_batch(indices, batch_replies)
            start += len(indices)
        return replies  # type: ignore[return-value]


def settings_eos(loaded: LoadedModel):
    """The EOS id (or ids) generation stops at: the model's generation config, else the tokenizer's."""
    return loaded.model.generation_config.eos_token_id or loaded.tokenizer.eos_token_id


def _reply_lengths(new_tokens, eos) -> tuple[list[int], list[int]]:
    """Per row: the generated tokens up to and including the first EOS (all if none), and 1 if the row
    ended with an EOS, else 0."""
    import torch

    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=new_tokens.device)
    is_eos = torch.isin(new_tokens, eos_ids)
    ended = is_eos.any(dim=1)
    lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, new_tokens.shape[1])
    return lengths.tolist(), ended.int().tolist()


def _free_cached_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
