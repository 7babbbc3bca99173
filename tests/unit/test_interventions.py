"""The intervention layer's invariants on both tiny random models (Qwen2 and Llama layouts)."""

from __future__ import annotations

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.hf import GenerationConfig, HFGenerator, render_prompt
from sev_bench.interventions import Capture, HookSession, InterventionSpec, handle_count
from sev_bench.models import load_model

TINY = ["tiny-random-qwen2", "tiny-random-llama"]
ALL_POSITIONS = frozenset({"last_prompt", "prompt", "generated"})


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, dtype="float32", device="cpu")


def _conversations(n: int) -> list[list[dict]]:
    return [
        prompts.chat(prompts.NEUTRAL_SYSTEM, "I went to the office" + " again" * i, "The meeting was moved.")
        for i in range(n)
    ]


def _encode(tiny, n: int):
    texts = [render_prompt(tiny.tokenizer, c) for c in _conversations(n)]
    return tiny.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _generate(tiny, encoded, new_tokens: int = 12):
    with torch.inference_mode():
        return tiny.model.generate(
            **encoded,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
        )


def _every_site_specs(tiny, add: float, scale: float) -> list[InterventionSpec]:
    hidden = tiny.model.config.hidden_size
    inner = tiny.model.config.intermediate_size
    specs = []
    for layer in range(tiny.num_layers):
        specs += [
            InterventionSpec("resid_post", layer, "add", torch.full((hidden,), add), positions=ALL_POSITIONS),
            InterventionSpec("attn_out", layer, "add", torch.full((hidden,), add), positions=ALL_POSITIONS),
            InterventionSpec("mlp_out", layer, "scale", scale, positions=ALL_POSITIONS),
            InterventionSpec(
                "attn_head", layer, "add", torch.full((tiny.head_dim,), add), index=1, positions=ALL_POSITIONS
            ),
            InterventionSpec("mlp_neuron", layer, "scale", scale, index=(0, 5, 7), positions=ALL_POSITIONS),
            InterventionSpec("resid_post", layer, "add", torch.full((hidden,), add), norm="rms"),
            InterventionSpec("mlp_neuron", layer, "add", torch.full((inner,), add)),
        ]
    return specs


def test_zero_strength_session_is_bit_identical(tiny):
    encoded = _encode(tiny, 3)
    plain = _generate(tiny, encoded)
    with torch.inference_mode():
        plain_logits = tiny.model(**encoded).logits
    with HookSession(tiny, _every_site_specs(tiny, add=0.0, scale=1.0)) as session:
        steered = _generate(tiny, encoded)
        with torch.inference_mode():
            steered_logits = tiny.model(**encoded).logits
    assert torch.equal(plain, steered)
    assert torch.equal(plain_logits, steered_logits)
    assert session.decode_calls == 11  # the hooks did run on every decode step
    # ... and a non-zero strength does change the output (the check above could not pass vacuously).
    with HookSession(tiny, _every_site_specs(tiny, add=0.5, scale=1.5)):
        assert not torch.equal(plain, _generate(tiny, encoded))


def test_no_handle_survives_an_exception_in_the_body(tiny):
    before = handle_count(tiny.model)
    specs = _every_site_specs(tiny, 0.1, 1.1)
    with pytest.raises(RuntimeError, match="boom"):
        with HookSession(tiny, specs, [Capture("resid_mid", 1), Capture("mlp_neuron", 2)]):
            assert handle_count(tiny.model) > before
            raise RuntimeError("boom")
    assert handle_count(tiny.model) == before


def test_no_handle_survives_a_failure_during_registration(tiny, monkeypatch):
    before = handle_count(tiny.model)
    late_module = tiny.layer(tiny.num_layers - 1)

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot register here")

    monkeypatch.setattr(late_module, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="cannot register"):
        with HookSession(tiny, _every_site_specs(tiny, 0.1, 1.1)):
            pass
    assert handle_count(tiny.model) == before


def test_invalid_specs_fail_before_any_hook(tiny):
    before = handle_count(tiny.model)
    hidden = tiny.model.config.hidden_size
    with pytest.raises(ValueError, match="out of range"):
        HookSession(tiny, [InterventionSpec("resid_post", tiny.num_layers, "add", torch.zeros(hidden))])
    with pytest.raises(ValueError, match="width"):
        HookSession(tiny, [InterventionSpec("resid_post", 0, "add", torch.zeros(hidden + 1))])
    with pytest.raises(ValueError, match="index out of range"):
        HookSession(tiny, [InterventionSpec("attn_head", 0, "ablate", index=tiny.num_heads)])
    with pytest.raises(ValueError, match="unknown intervention site"):
        InterventionSpec("embeddings", 0, "ablate")
    with pytest.raises(ValueError, match="positions"):
        InterventionSpec("resid_post", 0, "ablate", positions=frozenset({"everywhere"}))
    assert handle_count(tiny.model) == before


def test_batched_steered_generation_equals_one_at_a_time(tiny):
    generator = HFGenerator(tiny, batch_size=8, config=GenerationConfig(max_new_tokens=10))
    torch.manual_seed(0)
    vector = torch.randn(tiny.model.config.hidden_size)
    specs = [InterventionSpec("resid_post", layer, "add", vector, norm="rms") for layer in (1, 2)]
    conversations = _conversations(5)
    batched = generator.generate(conversations, interventions=specs)
    single = HFGenerator(tiny, batch_size=1, config=GenerationConfig(max_new_tokens=10))
    assert batched == single.generate(conversations, interventions=specs)
    assert batched != generator.generate(conversations)  # the steering did something


def test_generated_positions_hit_every_new_token(tiny):
    encoded = _encode(tiny, 3)
    specs = [InterventionSpec("mlp_out", 2, "scale", 1.0, positions=frozenset({"generated"}))]
    with HookSession(tiny, specs) as session:
        _generate(tiny, encoded, new_tokens=9)
    # Each decode step feeds the previous new token: 9 new tokens -> 8 forwarded, for all 3 rows.
    assert session.decode_calls == 8
    assert session.tokens_changed[("mlp_out", 2)] == 3 * 8


def test_last_prompt_is_each_rows_last_real_token_under_left_padding(tiny):
    encoded = _encode(tiny, 4)
    assert (encoded["attention_mask"] == 0).any()  # rows of different lengths: padding is present
    captures = [Capture("resid_post", 1), Capture("resid_mid", 1), Capture("attn_head", 2), Capture("mlp_neuron", 0)]
    with HookSession(tiny, captures=captures) as batched, torch.inference_mode():
        tiny.model(**encoded)
    for row in range(4):
        length = int(encoded["attention_mask"][row].sum())
        ids = encoded["input_ids"][row, -length:][None]
        with HookSession(tiny, captures=captures) as alone, torch.inference_mode():
            tiny.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        for capture in captures:
            key = (capture.site, capture.layer)
            torch.testing.assert_close(batched.captured[key][0][row], alone.captured[key][0][0], rtol=1e-5, atol=1e-5)


def test_right_padding_finds_the_last_real_token(tiny):
    texts = [render_prompt(tiny.tokenizer, c) for c in _conversations(2)]
    right = tiny.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right")
    hidden = tiny.model.config.hidden_size
    spec = InterventionSpec("resid_post", 2, "set", torch.full((hidden,), 7.0), positions=frozenset({"last_prompt"}))
    with HookSession(tiny, [spec]), torch.inference_mode():
        # hidden_states[3] is layer 2's output (the last entry is after the final norm).
        states = tiny.model(**right, output_hidden_states=True).hidden_states[3]
    for row in range(2):
        last = int(right["attention_mask"][row].sum()) - 1
        assert torch.all(states[row, last] == 7.0)
        assert not torch.any(states[row, :last] == 7.0)


def test_resid_mid_is_layer_input_plus_attention_output(tiny):
    encoded = _encode(tiny, 2)
    layer = 2
    outputs = {}
    handle = tiny.layer(layer).self_attn.register_forward_hook(lambda m, a, out: outputs.setdefault("attn", out[0]))
    try:
        with HookSession(tiny, captures=[Capture("resid_mid", layer)]) as session, torch.inference_mode():
            states = tiny.model(**encoded, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    expected = (states[layer] + outputs["attn"])[:, -1]
    torch.testing.assert_close(session.captured[("resid_mid", layer)][0], expected)


def test_mlp_in_is_the_normalised_mid_residual_and_can_stop_the_forward(tiny):
    """`mlp_in` = post_attention_layernorm(h_mid) (RMS-normalised, times the gain), what the MLP reads;
    `stop_after=("mlp_in", l)` ends the forward before layer l's MLP, with the capture already taken."""
    encoded = _encode(tiny, 2)
    layer = 1
    hooks = handle_count(tiny.model)  # transformers may keep its own (output recording)
    norm = tiny.layer(layer).post_attention_layernorm
    captures = [Capture("resid_mid", layer), Capture("mlp_in", layer)]
    with HookSession(tiny, captures=captures) as session, torch.inference_mode():
        tiny.model(**encoded)
    mid = session.captured[("resid_mid", layer)][0]
    gain = 0.5 + torch.arange(mid.shape[-1]) / mid.shape[-1]  # the tiny models' gain is 1: use another
    with torch.no_grad():
        saved = norm.weight.clone()
        norm.weight.copy_(gain)
    try:
        with HookSession(tiny, captures=captures) as session, torch.inference_mode():
            tiny.model(**encoded)
        later = [*captures, Capture("resid_post", layer)]
        with HookSession(tiny, captures=later, stop_after=("mlp_in", layer)) as stopped, torch.inference_mode():
            tiny.model(**encoded)
    finally:
        with torch.no_grad():
            norm.weight.copy_(saved)
    mid = session.captured[("resid_mid", layer)][0]
    expected = gain * mid / (mid.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    torch.testing.assert_close(session.captured[("mlp_in", layer)][0], expected)
    torch.testing.assert_close(stopped.captured[("mlp_in", layer)][0], expected)
    assert ("resid_post", layer) not in stopped.captured  # the MLP never ran
    assert handle_count(tiny.model) == hooks


def test_ops_on_heads_and_neurons(tiny):
    encoded = _encode(tiny, 2)
    head_dim = tiny.head_dim
    ablate = InterventionSpec("attn_head", 1, "ablate", index=(0, 2), positions=ALL_POSITIONS)
    scale_zero = InterventionSpec("attn_head", 1, "scale", 0.0, index=(0, 2), positions=ALL_POSITIONS)
    logits = []
    for spec in (ablate, scale_zero):
        with HookSession(tiny, [spec]), torch.inference_mode():
            logits.append(tiny.model(**encoded).logits)
    assert torch.equal(logits[0], logits[1])
    # What the output projection receives: the chosen heads' slices are zero, the others untouched.
    seen = {}
    proj = tiny.layer(1).get_submodule(tiny.adapter.attn_out_proj)
    with HookSession(tiny, [ablate]), torch.inference_mode():
        # Registered after the session's own pre-hook, so it sees the projection input after the change.
        handle = proj.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone()))
        try:
            tiny.model(**encoded)
        finally:
            handle.remove()
    x = seen["x"]
    assert torch.all(x[..., 0:head_dim] == 0) and torch.all(x[..., 2 * head_dim : 3 * head_dim] == 0)
    assert torch.any(x[..., head_dim : 2 * head_dim] != 0)
