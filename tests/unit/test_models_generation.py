"""Model loading (aliases, adapters, errors) and batched greedy generation on the tiny random models."""

from __future__ import annotations

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.hf import GenerationConfig, HFGenerator
from sev_bench.errors import UserError
from sev_bench.models import ADAPTERS, load_model

TINY = ["tiny-random-qwen2", "tiny-random-llama"]


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, dtype="float32", device="cpu")


def _conversations(n: int) -> list[list[dict]]:
    # Different lengths, so left padding matters inside a batch.
    return [
        prompts.chat(
            prompts.PROMPTING_SYSTEM_TEMPLATE.format(emotion=prompts.EMOTIONS[i % 6]),
            "I went to the office" + " today" * i,
            "The meeting was moved." if i % 2 else "My manager approved the report after a long review.",
        )
        for i in range(n)
    ]


def test_tiny_models_are_deterministic_and_small(tiny):
    again = load_model(tiny.model_id, dtype="float32", device="cpu")
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert tiny.model.num_parameters() < 1_000_000
    assert tiny.tokenizer.padding_side == "left"


def test_adapter_table_gives_layers_heads_and_projections(tiny):
    adapter = tiny.adapter
    assert tiny.num_layers == 4 and tiny.num_heads == 4 and tiny.head_dim == 16
    layer = tiny.layer(0)
    assert layer.get_submodule(adapter.attn_out_proj.removeprefix("")).in_features == 4 * 16
    assert layer.get_submodule(adapter.mlp_down_proj).in_features == 128
    assert {"llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text"} <= set(ADAPTERS)


def test_chat_template_renders_chatml(tiny):
    rendered = tiny.tokenizer.apply_chat_template(
        prompts.chat("SYS", "scene", "event"), tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nscene\nevent<|im_end|>\n<|im_start|>assistant\n"
    )


def test_batched_replies_equal_one_at_a_time_in_float32(tiny):
    conversations = _conversations(7)
    config = GenerationConfig(max_new_tokens=24)
    batched = HFGenerator(tiny, batch_size=4, config=config).generate(conversations)
    single = HFGenerator(tiny, batch_size=1, config=config).generate(conversations)
    assert batched == single
    assert len(set(batched)) > 1  # the prompts do lead to different replies


def test_generation_stops_at_eos_and_respects_max_new_tokens(tiny):
    generator = HFGenerator(tiny, batch_size=2, config=GenerationConfig(max_new_tokens=5))
    replies = generator.generate(_conversations(2))
    assert 0 < generator.new_token_count <= 2 * 5
    for reply in replies:
        assert "<|im_end|>" not in reply and "<|endoftext|>" not in reply
    # A model whose EOS is the first token it picks stops at once: an empty reply, one token counted.
    first_token = tiny.tokenizer(replies[0], add_special_tokens=False)["input_ids"][0]
    original_eos = tiny.model.generation_config.eos_token_id
    tiny.model.generation_config.eos_token_id = first_token
    try:
        stopped = HFGenerator(tiny, batch_size=1, config=GenerationConfig(max_new_tokens=5))
        assert stopped.generate(_conversations(1)) == [""]
        assert stopped.new_token_count == 1
    finally:
        tiny.model.generation_config.eos_token_id = original_eos


def test_out_of_memory_halves_the_batch_and_keeps_replies(tiny, monkeypatch):
    conversations = _conversations(6)
    config = GenerationConfig(max_new_tokens=8)
    expected = HFGenerator(tiny, batch_size=1, config=config).generate(conversations)
    generator = HFGenerator(tiny, batch_size=4, config=config)
    real = generator._generate_batch
    sizes = []

    def fake_oom_above_two(batch_prompts, interventions=()):
        sizes.append(len(batch_prompts))
        if len(batch_prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch_prompts, interventions)

    monkeypatch.setattr(generator, "_generate_batch", fake_oom_above_two)
    assert generator.generate(conversations) == expected
    assert generator.batch_size == 2 and sizes[0] == 4 and max(sizes[1:]) == 2


def test_other_errors_are_not_swallowed(tiny, monkeypatch):
    generator = HFGenerator(tiny, batch_size=2)

    def broken(batch_prompts, interventions=()):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(generator, "_generate_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        generator.generate(_conversations(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spec": "./no/such/model"}, "no such file or directory"),
        ({"spec": "missing.gguf"}, "no such GGUF file"),
        ({"spec": "tiny-random-gpt2"}, "unknown tiny model"),
        ({"spec": "tiny-random-qwen2", "dtype": "float8"}, "--dtype"),
        ({"spec": "tiny-random-qwen2", "device": "tpu"}, "--device"),
    ],
)
def test_model_errors_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_model(**kwargs)


def test_a_dir_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_local_dir_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert local.source == "local" and local.revision.startswith("local-sha256:")
    config = GenerationConfig(max_new_tokens=10)
    conversations = _conversations(3)
    assert HFGenerator(local, 3, config).generate(conversations) == HFGenerator(tiny, 3, config).generate(conversations)
