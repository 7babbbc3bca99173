"""The batched last-token engine of the circuit stages: prompts prefilled once without their last token,
then that token run for many copies of them in one decode call, each copy with its own intervention
(`LastTokenBatch`); and the batching helpers. torch is imported inside the functions (heavy)."""

from __future__ import annotations

import copy
import inspect

from ..interventions import Capture, HookSession


def _cache_argument(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _select_cache(cache, index):
    """A new cache whose batch rows are `cache`'s rows `index` (repeats allowed); `cache` is untouched."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        clone = copy.copy(cache)
        clone.layers = [copy.copy(layer) for layer in layers]
    else:
        clone = copy.deepcopy(cache)
    clone.batch_select_indices(index)
    return clone


class LastTokenBatch:
    """Prompts prefilled without their last token. `step(rows, specs, captures)` then runs the last token
    for copies of them (row r is a copy of prompt rows[r]) as one decode call: per-row specs at positions
    "generated" change that token, decode captures read it, and the post-norm final state comes back."""

    def __init__(self, loaded, texts: list[str]) -> None:
        import torch

        self.loaded = loaded
        device = next(loaded.model.parameters()).device
        encoded = loaded.tokenizer(
            list(texts), return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left"
        )
        self.ids = encoded["input_ids"].to(device)
        self.mask = encoded["attention_mask"].to(device)
        self.cache_argument = _cache_argument(loaded.model)
        with torch.inference_mode():
            out = loaded.model(
                input_ids=self.ids[:, :-1], attention_mask=self.mask[:, :-1], use_cache=True, logits_to_keep=1
            )
        self.cache = out["cache"] if "cache" in out else out["past_key_values"]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def step(self, rows, specs=(), captures=(), stop_after=None):
        """(captured {(site, layer): [R, width] float CPU}, h_final [R, d] float CPU, or None when
        `stop_after` ends the forward earlier). The LM head never runs."""
        import torch

        index = rows.to(self.ids.device)
        kwargs = {self.cache_argument: _select_cache(self.cache, index)}
        last = self.loaded.num_layers - 1
        final = Capture("resid_final", last, decode=True)
        if stop_after is None:
            captures, stop_after = [*captures, final], ("resid_final", last)
        with torch.inference_mode(), HookSession(self.loaded, specs, captures, stop_after=stop_after) as session:
            self.loaded.model(
                input_ids=self.ids[index, -1:],
                attention_mask=self.mask[index],
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        captured = {key: values[0] for key, values in session.captured.items()}
        return captured, captured.pop(("resid_final", last), None)


def length_batches(loaded, texts: list[str], size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `size`, longest first (little padding per batch)."""
    lengths = [len(ids) for ids in loaded.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    return [order[start : start + size] for start in range(0, len(order), size)]


def chunks(jobs: list, per_chunk: int):
    for start in range(0, len(jobs), per_chunk):
        yield jobs[start : start + per_chunk]

