"""Batched greedy generation with Hugging Face transformers (the hookable backend).

Prompts are chat-templated with `add_generation_prompt=True` and generated in batches of `batch_size`.
Within a call, prompts are sorted by length so that each batch carries little padding; replies come
back in the caller's order. On out-of-memory the batch size halves and the batch is retried.

A batch decodes in `continuous.ContinuousDecoder`: a row leaves the batch (with its KV-cache rows) as
soon as its reply ends, and each reply is the one `model.generate` gives for that prompt alone. A model
whose generation config asks for more than greedy decoding with the supported logits processing (beam
search, forced or banned tokens, ...) generates through `model.generate` instead, as it always did.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ..interventions import HookSession
from ..models import LoadedModel, load_model
from ..prompts import CHAT_TEMPLATE_KWARGS
from .base import Generator, GeneratorSettings

Messages = list[dict[str, str]]

DEFAULT_MAX_NEW_TOKENS = 100  # the protocol's


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; greedy always. Extra keys (`repetition_penalty`, `min_new_tokens`,
    `no_repeat_ngram_size`, which the paper's steering runs use) act as in `model.generate`."""

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
        self.decode_counts: Counter[str] = Counter()  # forward calls, as continuous.ContinuousDecoder counts
        self._decoding: _Decoding | None = None  # the decoding `generate` shares between its batches

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
        """Replies to one batch of prompts (at most `batch_size`), in order; per-row intervention values
        have one row per prompt. Within `generate` the next batch comes from the call's shared decoding
        (`self._decoding`), which already decodes it in the slots earlier rows left free."""
        decoding = self._decoding
        if decoding is None or not decoding.serves(prompts):  # a batch on its own
            decoding = self._open_decoding(list(prompts), list(range(len(prompts))), interventions)
            if decoding is None:
                return self._generate_with_transformers(prompts, interventions)
        replies = []
        for tokens in decoding.take(len(prompts)):
            self.new_token_count += len(tokens)
            # Cut the reply before its EOS: EOS tokens need not be "special".
            replies.append(tokens[:-1] if tokens and tokens[-1] in decoding.eos_ids else tokens)
        return self.loaded.tokenizer.batch_decode(replies, skip_special_tokens=True)

    def _open_decoding(self, prompts: list[str], numbers: list[int], interventions: Sequence) -> _Decoding | None:
        """A decoder for `prompts[i] for i in numbers`, in that order (`numbers` also index per-row
        intervention values); None where the model's generation config needs `model.generate`."""
        # continuous imports torch and transformers: loaded with the first batch, not at CLI start-up
        from .continuous import ContinuousDecoder, decode_settings

        tokenizer = self.loaded.tokenizer
        eos = settings_eos(self.loaded)
        settings = decode_settings(self.loaded.model, self.config.as_dict(), eos, tokenizer.pad_token_id)
        if settings is None:
            return None
        queued = [prompts[i] for i in numbers]
        token_ids = tokenizer(queued, add_special_tokens=False)["input_ids"] if queued else []
        session = HookSession(self.loaded, interventions) if interventions else None
        decoder = ContinuousDecoder(self.loaded.model, settings, self.batch_size, session, self.decode_counts)
        return _Decoding(queued, list(numbers), decoder.run(list(zip(numbers, token_ids))), settings.eos_ids)

    def _generate_with_transformers(self, prompts: Sequence[str], interventions: Sequence = ()) -> list[str]:
        """`_generate_batch` through `model.generate`: for generation configs the decoder does not cover."""
        import torch

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
        row while it generates; a [n, k] value (n = len(conversations)) gives each conversation its own."""
        tokenizer = self.loaded.tokenizer
        prompts = [render_prompt(tokenizer, messages) for messages in conversations]
        _check_row_values(interventions, len(prompts))
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        replies: list[str | None] = [None] * len(prompts)
        start = 0
        try:
            self._decoding = self._open_decoding(prompts, order, interventions)
            while start < len(order):
                indices = order[start : start + self.batch_size]
                try:
                    batch_prompts = [prompts[i] for i in indices]
                    batch_replies = self._generate_batch(batch_prompts, _rows_of(interventions, indices))
                except (RuntimeError, MemoryError) as exc:
                    if not _is_out_of_memory(exc) or self.batch_size == 1:
                        raise
                    self.batch_size = max(1, self.batch_size // 2)
                    print(f"out of memory; retrying with --batch-size {self.batch_size}", flush=True)
                    self._decoding = None
                    _free_cached_memory()
                    # the rows in flight start again, with fewer slots
                    self._decoding = self._open_decoding(prompts, order[start:], interventions)
                    continue
                for i, reply in zip(indices, batch_replies):
                    replies[i] = reply
                if on_batch is not None:
                    on_batch(indices, batch_replies)
                start += len(indices)
        finally:
            self._decoding = None
        return replies  # type: ignore[return-value]


@dataclass
class _Decoding:
    """One `generate` call's decoder, shared by its batches. Prompts are admitted in the call's order, so
    while a batch's last rows finish, the slots that others left already decode the next batch's
    prompts; a reply that ends before its batch is asked for waits in `ended`."""

    prompts: list[str]  # the prompts not yet served, in order: the next batch is at the head
    numbers: list[int]  # their numbers in the call
    ended_rows: Iterator[tuple[int, list[int]]]  # ContinuousDecoder.run: (number, new tokens) as rows end
    eos_ids: tuple[int, ...]
    ended: dict[int, list[int]] = field(default_factory=dict)

    def serves(self, prompts: Sequence[str]) -> bool:
        return list(prompts) == self.prompts[: len(prompts)]

    def take(self, count: int) -> list[list[int]]:
        """The new tokens of the next `count` prompts (decoding until all of them have ended)."""
        numbers = self.numbers[:count]
        while any(number not in self.ended for number in numbers):
            number, tokens = next(self.ended_rows)
            self.ended[number] = tokens
        del self.prompts[:count], self.numbers[:count]
        return [self.ended.pop(number) for number in numbers]


def settings_eos(loaded: LoadedModel):
    """The EOS id (or ids) generation stops at: the model's generation config, else the tokenizer's."""
    return loaded.model.generation_config.eos_token_id or loaded.tokenizer.eos_token_id


def _check_row_values(interventions: Sequence, rows: int) -> None:
    for spec in interventions:
        if _per_row(spec) and spec.value.shape[0] != rows:
            raise ValueError(f"{spec.site} layer {spec.layer}: {spec.value.shape[0]} per-row values for {rows} rows")


def _per_row(spec) -> bool:
    return not isinstance(spec.value, (int, float, type(None))) and spec.value.dim() == 2


def _rows_of(interventions: Sequence, indices: list[int]) -> list:
    """The interventions of a batch of rows: per-row values cut down to those rows, in batch order."""
    return [replace(spec, value=spec.value[indices]) if _per_row(spec) else spec for spec in interventions]


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
