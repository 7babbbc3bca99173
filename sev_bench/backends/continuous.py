"""Greedy decoding where finished rows leave the batch: the HF backend's generation loop.

`ContinuousDecoder(model, settings, slots).run(prompts)` decodes up to `slots` rows at a time and yields
each row's new tokens as soon as the row ends (an EOS, or `max_new_tokens`). A finished row leaves the
batch at once, together with its rows of the KV cache, so no decode step is spent on a reply that has
ended (`model.generate` keeps stepping every row until the longest reply ends). When more prompts wait
than there are slots, the next ones are prefilled together once enough slots are free, and join the
running batch: the two caches are left-padded to one length and stacked.

Each row decodes as `model.generate` decodes that prompt alone: its position ids count its own tokens
(padding is masked and takes no position), the next token is the argmax of the float32 logits, and the
logits processing (`min_new_tokens`, `repetition_penalty`, `no_repeat_ngram_size`, the transformers
processors) reads the row's own prompt and reply, without padding.

Interventions: a `HookSession` is entered around each forward call only, so whatever runs between steps
(the caller's callbacks) sees the unmodified model, and is told which rows the call carries
(`HookSession.select_rows`), so a per-row intervention value follows its row when rows leave or join.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional
from transformers import DynamicCache, LogitsProcessorList
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor


@dataclass(frozen=True)
class DecodeSettings:
    """Greedy decoding: when a row ends, and the logits processing `model.generate` would apply."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class _Batch:
    """The rows decoding together. The cache holds every row's tokens up to, not including, `pending`."""

    rows: list[int]  # prompt numbers, in batch order
    cache: DynamicCache  # per layer, keys and values [batch, kv heads, length, head dim]
    mask: torch.Tensor  # [batch, length]: 1 where the cache holds one of the row's tokens, 0 = padding
    positions: torch.Tensor  # [batch, 1]: the position id of each row's pending token
    pending: torch.Tensor  # [batch, 1]: each row's last chosen token, the input of the next step


# Generation-config keys that greedy decoding ignores or that the decoder honours. A model whose
# generation config sets any other (beam search, bad words, forced tokens, ...) is not decoded here.
_HONOURED_KEYS = frozenset(
    {"max_new_tokens", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "do_sample", "use_cache"}
)
_IGNORED_KEYS = frozenset(
    {
        "max_length",  # max_new_tokens wins over it
        *("temperature", "top_p", "top_k", "min_p", "typical_p"),  # sampling only
        *("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"),  # the caller's eos_ids
        *("output_attentions", "output_hidden_states", "return_dict_in_generate", "output_scores", "output_logits"),
        *("_from_model_config", "transformers_version"),
    }
)


def decode_settings(model, requested: dict, eos, pad_id: int | None) -> DecodeSettings | None:
    """The settings that decode like `model.generate(**requested, eos_token_id=eos)`, or None where the
    decoder cannot: the model's generation config asks for more, or its cache keeps more than keys and
    values per token (sliding-window or linear-attention layers cannot drop and stack rows)."""
    merged = {**model.generation_config.to_diff_dict(), **requested}
    if set(merged) - _HONOURED_KEYS - _IGNORED_KEYS or merged.get("do_sample") or not merged.get("use_cache", True):
        return None
    if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
        return None
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    return DecodeSettings(
        max_new_tokens=int(merged["max_new_tokens"]),
        eos_ids=tuple(int(token) for token in eos_ids),
        pad_id=0 if pad_id is None else int(pad_id),
        min_new_tokens=int(merged.get("min_new_tokens") or 0),
        repetition_penalty=float(merged.get("repetition_penalty") or 1.0),
        no_repeat_ngram_size=int(merged.get("no_repeat_ngram_size") or 0),
    )


class ContinuousDecoder:
    """Greedy decoding of many prompts with at most `slots` rows per forward call (see the module doc)."""

    def __init__(
        self,
        model,
        settings: DecodeSettings,
        slots: int,
        session=None,
        counts: Counter | None = None,
        refill_at: int | None = None,
    ):
        self.model = model
        self.settings = settings
        self.slots = slots
        self.session = session  # a HookSession (entered around each forward call) or None
        # Free slots that start a refill: each refill is one extra forward call, so wait for a few.
        self.refill_at = refill_at or max(1, slots // 4)
        # What the decoding cost, in forward calls (a measure of the work that contention does not blur):
        # "prefills" (calls over prompts), "decode_steps" (one new token per row), "decode_rows" (rows
        # carried by the decode steps, summed: each gives a kept token, as finished rows have left).
        self.counts = counts if counts is not None else Counter()
        parameters = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        # transformers 5 renamed `past_key_values` to `cache` in forward(); take whichever this one has
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self._tokens: dict[int, list[int]] = {}  # per row: its prompt and reply so far
        self._new: dict[int, int] = {}  # per row: how many tokens it generated
        processors = []
        if settings.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
        if settings.no_repeat_ngram_size > 0:
            processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
        self._processors = LogitsProcessorList(processors)

    def run(self, prompts: Sequence[tuple[int, list[int]]]) -> Iterator[tuple[int, list[int]]]:
        """Yield `(prompt number, new tokens)` for each of `prompts` ((number, token ids) pairs, decoded
        in this order) as soon as its row ends; the tokens end with the EOS when the row stopped at one."""
        waiting = deque(prompts)
        batch: _Batch | None = None
        while waiting or batch is not None:
            free = self.slots - (len(batch.rows) if batch is not None else 0)
            if waiting and (batch is None or free >= min(self.refill_at, len(waiting))):
                joining = self._prefill([waiting.popleft() for _ in range(min(free, len(waiting)))])
                batch = joining if batch is None else _stack(batch, joining)
            else:
                self._decode_step(batch)
            ended = [i for i, row in enumerate(batch.rows) if self._has_ended(row)]
            for i in ended:
                row = batch.rows[i]
                yield row, self._tokens.pop(row)[-self._new.pop(row) :]
            if ended:
                left = set(ended)
                batch = _keep(batch, [i for i in range(len(batch.rows)) if i not in left])

    def _has_ended(self, row: int) -> bool:
        return self._new[row] >= self.settings.max_new_tokens or self._tokens[row][-1] in self.settings.eos_ids

    @torch.inference_mode()
    def _prefill(self, prompts: list[tuple[int, list[int]]]) -> _Batch:
        """Run the prompts (left-padded to one length) through a fresh cache and choose each first token."""
        width = max(len(ids) for _, ids in prompts)
        ids = torch.full((len(prompts), width), self.settings.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, (_, prompt) in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)  # as model.generate numbers them
        rows = [row for row, _ in prompts]
        for row, prompt in prompts:
            self._tokens[row], self._new[row] = list(prompt), 0
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(rows, ids, mask, positions, cache)
        self.counts["prefills"] += 1
        chosen = self._choose(rows, logits)
        return _Batch(rows, cache, mask, positions[:, -1:] + 1, chosen[:, None])

    @torch.inference_mode()
    def _decode_step(self, batch: _Batch) -> None:
        """Feed every row its pending token; choose the next one."""
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        logits = self._forward(batch.rows, batch.pending, mask, batch.positions, batch.cache)
        self.counts["decode_steps"] += 1
        self.counts["decode_rows"] += len(batch.rows)
        batch.mask, batch.positions = mask, batch.positions + 1
        batch.pending = self._choose(batch.rows, logits)[:, None]

    def _forward(self, rows: list[int], ids, mask, positions, cache) -> torch.Tensor:
        """The float32 logits of each row's last token (the copy `model.generate` takes)."""
        extra = {self._cache_keyword: cache}
        if self._logits_to_keep:
            extra["logits_to_keep"] = 1
        session = self.session if self.session is not None else contextlib.nullcontext()
        if self.session is not None:
            self.session.select_rows(rows)
        with session:
            output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return output.logits[:, -1].to(copy=True, dtype=torch.float32)

    def _choose(self, rows: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token: the argmax after the logits processing, appended to the row."""
        if self._processors:
            for i, row in enumerate(rows):  # on the row's own tokens: no padding, as when decoded alone
                ids = torch.tensor([self._tokens[row]], dtype=torch.long, device=logits.device)
                logits[i : i + 1] = self._processors(ids, logits[i : i + 1])
        if self.settings.min_new_tokens and self.settings.eos_ids:
            short = [i for i, row in enumerate(rows) if self._new[row] < self.settings.min_new_tokens]
            if short:
                eos = torch.tensor(self.settings.eos_ids, device=logits.device)
                logits[torch.tensor(short, device=logits.device)[:, None], eos] = -float("inf")
        chosen = torch.argmax(logits, dim=-1)
        for row, token in zip(rows, chosen.tolist()):
            self._tokens[row].append(token)
            self._new[row] += 1
        return chosen


@torch.inference_mode()
def _keep(batch: _Batch, keep: list[int]) -> _Batch | None:
    """The batch with only the rows `keep` (batch indices), and without the leading cache columns that
    none of them uses (the left padding of rows that left)."""
    if not keep:
        return None
    index = torch.tensor(keep, device=batch.mask.device)
    batch.cache.batch_select_indices(index)
    batch.rows = [batch.rows[i] for i in keep]
    batch.mask, batch.positions, batch.pending = batch.mask[index], batch.positions[index], batch.pending[index]
    unused = int(batch.mask.any(dim=0).int().argmax())  # the first column some row uses
    if unused:
        batch.mask = batch.mask[:, unused:]
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
    return batch


@torch.inference_mode()
def _stack(running: _Batch, joining: _Batch) -> _Batch:
    """One batch of both: caches and masks left-padded (masked zeros) to the longer length, then stacked."""
    length = max(running.mask.shape[1], joining.mask.shape[1])

    def padded(tensor, dim: int):
        missing = length - tensor.shape[dim]
        if not missing:
            return tensor
        return functional.pad(tensor, (0, 0) * (tensor.dim() - 1 - dim) + (missing, 0))

    for mine, theirs in zip(running.cache.layers, joining.cache.layers):
        mine.keys = torch.cat([padded(mine.keys, 2), padded(theirs.keys, 2)])
        mine.values = torch.cat([padded(mine.values, 2), padded(theirs.values, 2)])
    running.rows = running.rows + joining.rows
    running.mask = torch.cat([padded(running.mask, 1), padded(joining.mask, 1)])
    running.positions = torch.cat([running.positions, joining.positions])
    running.pending = torch.cat([running.pending, joining.pending])
    return running
