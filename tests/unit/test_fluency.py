"""The fluency guard: text statistics, perplexity on the tiny random models, the gate, aggregates and
fluent accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from sev_bench import prompts
from sev_bench.backends.hf import render_prompt
from sev_bench.data import load_reference
from sev_bench.fluency import (
    DEFAULT_THRESHOLDS,
    FluencyThresholds,
    aggregate_fluency,
    fluency_record,
    fluency_records,
    reply_perplexities,
    text_stats,
)
from sev_bench.metrics import fluent_accuracy, grouped_accuracy
from sev_bench.models import load_model

TINY = ["tiny-random-qwen2", "tiny-random-llama"]


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, dtype="float32", device="cpu")


# ---------------------------------------------------------------- text statistics


def test_stats_of_a_plain_sentence():
    stats = text_stats("The cat sat on the mat.")
    assert stats == {
        "n_words": 6,
        "distinct_1": 5 / 6,  # "the" twice
        "distinct_2": 1.0,
        "repetition_rate": 0.0,
        "repeated_4gram": False,
        "char_loop": False,
    }


def test_stats_of_a_sentence_said_twice():
    # words: i am so sad i am so sad; 4-grams: iass, assi, ssia, siam, iass -> one repeat of five
    stats = text_stats("I am so sad. I am SO sad!")
    assert stats["n_words"] == 8
    assert stats["distinct_1"] == 4 / 8
    assert stats["distinct_2"] == 4 / 7  # i-am, am-so, so-sad, sad-i (+ i-am, am-so, so-sad again)
    assert stats["repetition_rate"] == 1 / 5
    assert stats["repeated_4gram"] is True


def test_stats_of_a_loop():
    stats = text_stats("a b c d " * 5)  # 20 words, 17 four-grams, 4 distinct
    assert stats["repetition_rate"] == 13 / 17
    assert stats["distinct_1"] == 4 / 20
    assert stats["repeated_4gram"] is True


def test_contractions_case_and_curly_apostrophes_are_one_word():
    stats = text_stats("Don't! DON\u2019T stop.")  # don't don't stop
    assert stats["n_words"] == 3
    assert stats["distinct_1"] == 2 / 3
    assert stats["distinct_2"] == 1.0


def test_short_and_empty_replies_have_undefined_ratios():
    assert text_stats("Wow") == {
        "n_words": 1,
        "distinct_1": 1.0,
        "distinct_2": None,
        "repetition_rate": None,
        "repeated_4gram": False,
        "char_loop": False,
    }
    three = text_stats("no no no")  # fewer than 4 words: no 4-gram can repeat
    assert three["distinct_2"] == 1 / 2 and three["repetition_rate"] is None and not three["repeated_4gram"]
    assert text_stats(" ... ") == {
        "n_words": 0,
        "distinct_1": None,
        "distinct_2": None,
        "repetition_rate": None,
        "repeated_4gram": False,
        "char_loop": False,
    }


@pytest.mark.parametrize(
    ("text", "looped"),
    [
        ("I am so f**@**@**@**@**@**@**@**@**@**@ angry.", True),  # a loop inside one "word"
        ("hahahahahahahahahahahahahaha that is so funny", True),
        ("Wow!!!!!!!!!!!!!!!!!!!!!!!!!!!!", True),
        ("I'm furious!!! How could they do this?", False),  # a short burst is not a loop
        ("The meeting is at 3 pm, room 204, floor 2.", False),
        ("Nooo, not again.", False),
        (" " * 40 + "Fine.", False),  # whitespace is not a loop
    ],
)
def test_character_loops_are_caught_where_the_word_rule_is_blind(text, looped):
    stats = text_stats(text)
    assert stats["char_loop"] is looped
    assert not stats["repeated_4gram"]  # the word-level rule alone would pass every one of them
    assert fluency_record(stats, 5.0, FluencyThresholds(max_perplexity=50.0))["fluent"] is (not looped)


# ---------------------------------------------------------------- perplexity


def _conversations(n: int) -> list[list[dict]]:
    return [
        prompts.chat(
            prompts.PROMPTING_SYSTEM_TEMPLATE.format(emotion=prompts.EMOTIONS[i % 6]),
            "I went to the office" + " today" * (3 * i),
            "The meeting was moved." if i % 2 else "My manager approved the report after a long review.",
        )
        for i in range(n)
    ]


def _sev_chats_and_replies(n: int) -> tuple[list[list[dict]], list[str]]:
    """Real SEV chats and replies: 200-330 tokens on the tiny tokenizer, long enough for the attention's
    width-dependent blocking to show if the padding were wrong."""
    rows = load_reference("train")[:n]
    chats = [
        prompts.chat(prompts.PROMPTING_SYSTEM_TEMPLATE.format(emotion=r["emotion"]), r["scenario"], r["event"])
        for r in rows
    ]
    return chats, [r["gen_text"] for r in rows]


def test_batched_perplexity_equals_one_at_a_time_exactly(tiny):
    short_chats = _conversations(8)
    short_replies = [
        "I am angry.",
        "Wow, unexpected!",
        "What a terrible awful week at the office, my manager was furious.",
        "The report was great and the team was happy today. " * 3,
        "Oh.",
        "The flight was cancelled and the hotel lost my order; I am so disgusted.",
        "I was afraid the exam would be scary, but the teacher was wonderful.",
        "No.",
    ]
    sev_chats, sev_replies = _sev_chats_and_replies(8)
    chats, replies = short_chats + sev_chats, short_replies + sev_replies
    batched = reply_perplexities(tiny, chats, replies, batch_size=16)
    uneven = reply_perplexities(tiny, chats, replies, batch_size=3)
    single = reply_perplexities(tiny, chats, replies, batch_size=1)
    assert all(isinstance(p, float) and p > 1 for p in batched)
    # Equal up to float32 rounding: the CPU's matmul kernels may block a 16-row batch differently from one
    # row (seen here as 3e-7 relative on the llama model); wrong padding or positions would be far larger.
    assert batched == pytest.approx(single, rel=2e-6)
    assert uneven == pytest.approx(single, rel=2e-6)
    # A reply's perplexity does not depend on which other replies share the call.
    reversed_call = reply_perplexities(tiny, chats[::-1], replies[::-1], batch_size=16)
    assert reversed_call[::-1] == pytest.approx(single, rel=2e-6)


def test_perplexity_equals_a_manual_forward(tiny):
    chats, replies = _conversations(1), ["My manager was furious about the cancelled flight."]
    tokenizer = tiny.tokenizer
    prompt = tokenizer(render_prompt(tokenizer, chats[0]), add_special_tokens=False)["input_ids"]
    reply = tokenizer(replies[0], add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = tiny.model(input_ids=torch.tensor([prompt + reply])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[len(prompt) - 1 : -1], torch.tensor(reply))
    expected = math.exp(nll.item())
    (measured,) = reply_perplexities(tiny, chats, replies)
    # The function pads to a multiple of 16 tokens; an unpadded forward differs only by float rounding.
    assert measured == pytest.approx(expected, rel=1e-5)


def test_perplexity_is_conditioned_on_the_prompt(tiny):
    reply = "The team was happy with the report."
    with_prompts = reply_perplexities(tiny, _conversations(2), [reply, reply])
    assert with_prompts[0] != with_prompts[1]


def test_empty_reply_has_no_perplexity_and_is_not_fluent(tiny):
    chats = _conversations(3)
    perplexities = reply_perplexities(tiny, chats, ["", "I am sad.", ""])
    assert perplexities[0] is None and perplexities[2] is None and isinstance(perplexities[1], float)
    record = fluency_record(text_stats(""), None)
    assert record["fluent"] is False and record["perplexity"] is None
    rows = [{"scenario": m[1]["content"].split("\n")[0], "event": m[1]["content"].split("\n")[1]} for m in chats]
    records = fluency_records(tiny, rows, ["", "I am sad.", ""], thresholds=FluencyThresholds(max_perplexity=1e9))
    assert [r["fluent"] for r in records] == [False, True, False]
    assert all(r["perplexity_chat"] == "neutral" for r in records)


def test_every_method_s_reply_is_measured_under_the_same_neutral_chat(tiny):
    """The gate takes no side: the same reply to the same event gets the same perplexity whatever chat
    (prompting's "Always reply in anger.", steering's, none's) produced it."""
    row = {"scenario": "I went to the office today", "event": "My manager approved the report."}
    reply = "I'm furious that it took them this long!"
    neutral = prompts.chat(prompts.NEUTRAL_SYSTEM, row["scenario"], row["event"])
    (record,) = fluency_records(tiny, [row], [reply])
    (expected,) = reply_perplexities(tiny, [neutral], [reply])
    assert record["perplexity"] == expected
    prompting = prompts.chat(prompts.PROMPTING_SYSTEM_TEMPLATE.format(emotion="anger"), row["scenario"], row["event"])
    (own_chat,) = reply_perplexities(tiny, [prompting], [reply])
    assert own_chat != expected  # the old, method-conditioned measure differs (the check is not vacuous)


def test_perplexity_refuses_a_hooked_model(tiny):
    handle = tiny.model.get_submodule("model.layers.0").register_forward_hook(lambda module, args, output: None)
    try:
        with pytest.raises(RuntimeError, match="unmodified"):
            reply_perplexities(tiny, _conversations(1), ["Hello."])
    finally:
        handle.remove()


def test_perplexity_checks_its_arguments(tiny):
    with pytest.raises(ValueError):
        reply_perplexities(tiny, _conversations(2), ["one reply"])
    with pytest.raises(ValueError):
        reply_perplexities(tiny, _conversations(1), ["a"], batch_size=0)


# ---------------------------------------------------------------- the gate


def test_gate_needs_words_no_repeated_4gram_and_low_perplexity():
    thresholds = FluencyThresholds(max_perplexity=50.0)
    plain, looped = text_stats("The cat sat on the mat."), text_stats("I am so sad. I am so sad.")
    assert fluency_record(plain, 12.0, thresholds)["fluent"] is True
    assert fluency_record(plain, 49.99, thresholds)["fluent"] is True
    assert fluency_record(plain, 50.0, thresholds)["fluent"] is False  # strictly below the bound
    assert fluency_record(plain, 500.0, thresholds)["fluent"] is False
    assert fluency_record(looped, 3.0, thresholds)["fluent"] is False  # loops have low perplexity
    assert fluency_record(text_stats("!!!"), 3.0, thresholds)["fluent"] is False  # no words
    record = fluency_record(plain, 12.0, thresholds)
    assert record == {**plain, "perplexity": 12.0, "perplexity_chat": "neutral", "fluent": True}
    assert 20 < DEFAULT_THRESHOLDS.max_perplexity < 200


# ---------------------------------------------------------------- aggregates and fluent accuracy


def _sample(id_, valence, emotion, correct, fluent, perplexity=10.0, text="The cat sat on the mat."):
    stats = text_stats(text)
    return {
        "id": id_,
        "valence": valence,
        "target_emotion": emotion,
        "correct": correct,
        "fluency": {**stats, "perplexity": perplexity, "fluent": fluent},
    }


def test_aggregate_fluency():
    samples = [
        _sample("a", "positive", "anger", True, True, perplexity=10.0),
        _sample("b", "positive", "anger", True, False, perplexity=30.0, text="I am so sad. I am so sad."),
        _sample("c", "negative", "fear", False, True, perplexity=2.0, text="Wow"),
        _sample("d", "negative", "fear", False, False, perplexity=None, text=""),
    ]
    result = aggregate_fluency(samples, DEFAULT_THRESHOLDS)
    assert result["n"] == 4 and result["n_perplexity"] == 3
    assert result["perplexity_mean"] == pytest.approx(14.0)
    assert result["perplexity_median"] == 10.0
    assert result["distinct_1_mean"] == pytest.approx((5 / 6 + 4 / 8 + 1.0) / 3)  # "" has no words
    assert result["distinct_2_mean"] == pytest.approx((1.0 + 4 / 7) / 2)  # "Wow" has no bigram
    assert result["repetition_rate_mean"] == pytest.approx((0.0 + 1 / 5) / 2)
    assert result["repeated_4gram_share"] == 0.25
    assert result["char_loop_share"] == 0.0
    assert result["fluent_share"] == 0.5
    assert result["thresholds"] == {"max_perplexity": DEFAULT_THRESHOLDS.max_perplexity, "min_words": 1}
    assert "thresholds" not in aggregate_fluency(samples)
    assert aggregate_fluency([])["n"] == 0 and aggregate_fluency([])["fluent_share"] is None


def test_fluent_accuracy_counts_only_correct_and_fluent():
    samples = [
        _sample("a", "positive", "anger", True, True),
        _sample("b", "positive", "anger", True, False),
        _sample("c", "positive", "fear", False, True),
        _sample("d", "negative", "fear", True, True),
        _sample("e", "negative", "fear", False, False),
    ]
    raw, fluent = grouped_accuracy(samples), fluent_accuracy(samples)
    assert raw["overall"]["correct"] == 3 and fluent["overall"]["correct"] == 2
    assert fluent["overall"]["n"] == 5 and fluent["overall"]["acc"] == 2 / 5
    assert fluent["by_valence"]["positive"]["correct"] == 1 and fluent["by_valence"]["positive"]["n"] == 3
    assert fluent["by_valence"]["negative"]["correct"] == 1
    assert fluent["by_emotion"]["anger"]["acc"] == 1 / 2
    assert fluent["by_valence_emotion"]["negative"]["fear"]["correct"] == 1
    assert set(fluent) == set(raw) and set(fluent["by_emotion"]) == {"anger", "fear"}
    assert samples[1]["correct"] is True  # the caller's samples are not modified
    with pytest.raises(ValueError, match="'x'"):
        fluent_accuracy([{"id": "x", "valence": "positive", "target_emotion": "anger", "correct": True}])
