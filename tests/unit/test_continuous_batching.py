"""The HF backend's decoder (finished rows leave the batch, waiting prompts join it) gives every row the
reply `model.generate` gives that prompt alone, with and without interventions, on both tiny models."""

from __future__ import annotations

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.continuous import ContinuousDecoder, decode_settings
from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt, settings_eos
from sev_bench.interventions import HookSession, InterventionSpec, handle_count
from sev_bench.models import load_model

TINY = ["tiny-random-qwen2", "tiny-random-llama"]
STEERED = frozenset({"last_prompt", "generated"})
EXTRAS = {"min_new_tokens": 3, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3}


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, dtype="float32", device="cpu")


def _end_early(tiny, monkeypatch, conversations, config: GenerationConfig, specs=()) -> None:
    """Add an EOS token that ends these replies at very different lengths (undone after the test)."""
    _, sequences = _one_at_a_time(tiny, conversations, config, specs, per_row=_has_row_values(specs))
    best, best_spread = None, -1
    too_early = {t for ids in sequences for t in ids[: config.extra.get("min_new_tokens", 0)]}  # EOS is banned there
    for token in {t for ids in sequences for t in ids} - too_early:
        ends = [ids.index(token) if token in ids else len(ids) for ids in sequences]
        if max(ends) - min(ends) > best_spread:
            best, best_spread = token, max(ends) - min(ends)
    eos = tiny.model.generation_config.eos_token_id
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", [eos, best])


def _has_row_values(specs) -> bool:
    return any(not isinstance(spec.value, float) and spec.value.dim() == 2 for spec in specs)


def _conversations(method: str, n: int) -> list[list[dict]]:
    """Chats of different lengths; `none` has the neutral system prompt, the others an emotion's."""
    chats = []
    for i in range(n):
        system = prompts.NEUTRAL_SYSTEM if method == "none" else prompts.PROMPTING_SYSTEM_TEMPLATE
        system = system.format(emotion=prompts.EMOTIONS[i % 6])
        chats.append(prompts.chat(system, "I went to the office" + " again" * (i % 5), f"Event number {i}."))
    return chats


def _specs(tiny, method: str, rows: int | None = None) -> list[InterventionSpec]:
    """Interventions shaped like the methods': steering adds an RMS-scaled vector to the residual stream
    at the last prompt token and generated tokens; circuit adds to chosen neurons (last prompt token and
    generated) and to chosen heads at every position. `rows` gives each row its own value."""
    generator = torch.Generator().manual_seed(0)

    def value(width: int, scale: float):
        shape = (width,) if rows is None else (rows, width)
        return scale * torch.randn(shape, generator=generator)

    if method == "steering":
        hidden = tiny.model.config.hidden_size
        return [InterventionSpec("resid_post", layer, "add", value(hidden, 0.3), norm="rms") for layer in (1, 2)]
    if method == "circuit":
        every = frozenset({"prompt", "generated"})
        return [
            InterventionSpec("mlp_neuron", 1, "add", value(16, 0.05), index=tuple(range(0, 64, 4)), positions=STEERED),
            InterventionSpec("attn_head", 2, "add", value(tiny.head_dim, 0.05), index=1, positions=every),
        ]
    return []


def _one_at_a_time(tiny, conversations, config: GenerationConfig, specs=(), per_row=False):
    """The authors' loop: each prompt alone through `model.generate` (no padding), hooks around it.
    Returns the replies and each reply's new tokens (with its EOS)."""
    replies, sequences = [], []
    eos = settings_eos(tiny)
    eos_ids = eos if isinstance(eos, list) else [eos]
    for i, messages in enumerate(conversations):
        ids = tiny.tokenizer(render_prompt(tiny.tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        row_specs = [_row_spec(spec, i) for spec in specs] if per_row else list(specs)
        with torch.inference_mode(), HookSession(tiny, row_specs):
            output = tiny.model.generate(
                **ids, pad_token_id=tiny.tokenizer.pad_token_id, eos_token_id=eos, **config.as_dict()
            )
        tokens = output[0, ids["input_ids"].shape[1] :].tolist()
        sequences.append(tokens)
        reply = tokens[:-1] if tokens and tokens[-1] in eos_ids else tokens
        replies.append(tiny.tokenizer.decode(reply, skip_special_tokens=True))
    return replies, sequences


def _row_spec(spec: InterventionSpec, row: int) -> InterventionSpec:
    return InterventionSpec(spec.site, spec.layer, spec.op, spec.value[row], spec.index, spec.positions, spec.norm)


@pytest.mark.parametrize("method", ["none", "prompting", "steering", "circuit"])
@pytest.mark.parametrize("extra", [{}, EXTRAS], ids=["greedy", "penalties"])
def test_batched_replies_equal_one_at_a_time(tiny, monkeypatch, method, extra):
    conversations = _conversations(method, 7)
    config = GenerationConfig(max_new_tokens=30, extra=extra)
    specs = _specs(tiny, method)
    _end_early(tiny, monkeypatch, conversations, config, specs)
    generator = HFGenerator(tiny, batch_size=4, config=config)
    batched = generator.generate(conversations, interventions=specs)
    expected, sequences = _one_at_a_time(tiny, conversations, config, specs)
    assert batched == expected
    lengths = [len(tokens) for tokens in sequences]
    assert max(lengths) - min(lengths) >= 3, lengths  # rows did leave the batch at different steps
    # No decode step carried a finished row: each row's tokens after its first came from one decode row.
    assert generator.decode_counts["decode_rows"] == generator.new_token_count - len(conversations)
    if specs:
        assert batched != HFGenerator(tiny, batch_size=4, config=config).generate(conversations)


@pytest.mark.parametrize("method", ["steering", "circuit"])
def test_per_row_values_follow_their_row_when_rows_leave(tiny, monkeypatch, method):
    conversations = _conversations(method, 6)
    config = GenerationConfig(max_new_tokens=30)
    specs = _specs(tiny, method, rows=len(conversations))
    _end_early(tiny, monkeypatch, conversations, config, specs)
    batched = HFGenerator(tiny, batch_size=4, config=config).generate(conversations, interventions=specs)
    assert batched == _one_at_a_time(tiny, conversations, config, specs, per_row=True)[0]
    with pytest.raises(ValueError, match="per-row values for 5 rows"):
        HFGenerator(tiny, batch_size=4, config=config).generate(conversations[:5], interventions=specs)


@pytest.mark.parametrize("slots", [1, 3])
def test_waiting_prompts_join_the_running_batch(tiny, monkeypatch, slots):
    """More prompts than slots: rows prefilled later are stacked onto the running batch (caches
    left-padded to one length) and still decode as they would alone, interventions included."""
    conversations = _conversations("prompting", 7)
    config = GenerationConfig(max_new_tokens=30, extra=EXTRAS)
    specs = _specs(tiny, "circuit", rows=len(conversations))
    _end_early(tiny, monkeypatch, conversations, config, specs)
    tokenizer = tiny.tokenizer
    ids = [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in conversations]
    settings = decode_settings(tiny.model, config.as_dict(), settings_eos(tiny), tokenizer.pad_token_id)
    decoder = ContinuousDecoder(tiny.model, settings, slots, HookSession(tiny, specs), refill_at=1)
    before = handle_count(tiny.model)
    replies = {}
    for row, tokens in decoder.run(list(enumerate(ids))):
        assert handle_count(tiny.model) == before  # between steps the model runs without hooks
        if tokens[-1] in settings.eos_ids:
            tokens = tokens[:-1]
        replies[row] = tokenizer.decode(tokens, skip_special_tokens=True)
    expected = _one_at_a_time(tiny, conversations, config, specs, per_row=True)[0]
    assert [replies[i] for i in range(len(conversations))] == expected
    if slots == 1:  # one prompt at a time: each row is prefilled when the previous one has ended
        assert decoder.counts["prefills"] == len(conversations)
    else:
        assert 1 < decoder.counts["prefills"] < len(conversations)


def test_on_batch_runs_without_hooks(tiny):
    conversations = _conversations("steering", 6)
    before = handle_count(tiny.model)
    seen = []

    def on_batch(indices, replies):
        seen.append(handle_count(tiny.model))

    generator = HFGenerator(tiny, batch_size=4, config=GenerationConfig(max_new_tokens=12))
    generator.generate(conversations, on_batch=on_batch, interventions=_specs(tiny, "steering"))
    assert seen == [before, before] and handle_count(tiny.model) == before


def test_a_generation_config_beyond_the_decoder_goes_through_model_generate(tiny, monkeypatch):
    conversations = _conversations("prompting", 3)
    config = GenerationConfig(max_new_tokens=8)
    expected = HFGenerator(tiny, batch_size=3, config=config).generate(conversations)
    settings = tiny.model.generation_config
    assert decode_settings(tiny.model, config.as_dict(), settings_eos(tiny), 0) is not None
    monkeypatch.setattr(settings, "suppress_tokens", [5])
    assert decode_settings(tiny.model, config.as_dict(), settings_eos(tiny), 0) is None
    calls = []
    generator = HFGenerator(tiny, batch_size=3, config=config)
    real = generator._generate_with_transformers
    monkeypatch.setattr(generator, "_generate_with_transformers", lambda p, i=(): calls.append(p) or real(p, i))
    replies = generator.generate(conversations)
    assert len(calls) == 1 and len(replies) == 3
    monkeypatch.setattr(settings, "suppress_tokens", None)
    assert HFGenerator(tiny, batch_size=3, config=config).generate(conversations) == expected
