"""Tiny random models for tests (`tiny-random-qwen2`, `tiny-random-llama`): a few hundred thousand
parameters, a locally trained byte-level BPE tokenizer and a ChatML template, built deterministically in
memory, so the whole pipeline runs in seconds without a download.

torch, transformers and tokenizers are imported inside the builders: importing sev_bench.models must not
pay their start-up cost."""

from __future__ import annotations

TINY_BUILDER_VERSION = "tiny-v1"  # the `revision` of a tiny model; bump it when the builders change

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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
    # heavy: see the module docstring
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
    # heavy: see the module docstring
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
