"""Every chat message the paper's protocol uses, in one place (docs/protocol.md, "Prompts and the judge")."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
VALENCES: tuple[str, ...] = ("positive", "neutral", "negative")

# Step 1 / prompting baseline: the emotion is named in the system prompt.
PROMPTING_SYSTEM_TEMPLATE = "Always reply in {emotion}.\nKeep the reply to at most two sentences."

# No emotion in the prompt: the circuit-modulation and sublayer-importance scripts use this one. It is the
# one neutral chat of `none`, `steering` and `circuit` (and of the fluency gate's perplexity), so alpha=0 and
# scale=0 give `none`'s replies byte for byte and an intervention is compared with no prompt change mixed in.
NEUTRAL_SYSTEM = "Keep the reply to at most two sentences."

# The steering script's literal, unstripped system prompt, kept byte for byte for reproduction
# (`methods/steering-authors.yaml`); not the default, since it differs from `none`'s chat.
STEERING_SYSTEM = "\n    Keep the reply to at most two sentences.\n    "

# Fixed extra inputs of every chat-template render (`sev_bench.backends.hf.render_prompt`, which the HF and
# vLLM backends, discovery and the fluency gate all use; the lm-eval task asks for them in `--model_args`).
# Llama-3 templates put the day's date in the system header when no `date_string` is given, so a prompt
# would change with the day it runs, and neither resume nor the caches would notice. This is the date the
# Llama-3 template itself falls back to. Templates that do not read it (ChatML: SmolLM2, Qwen2) ignore it.
# Recorded in every result (`spec.generation.chat_template_kwargs`) and in the run identity.
DATE_STRING = "26 Jul 2024"
CHAT_TEMPLATE_KWARGS: dict[str, str] = {"date_string": DATE_STRING}

# The paper's GPT-4o-mini judge (section 4).
JUDGE_SYSTEM = (
    "You are a careful rater.\nGiven a target emotion and a text,\n"
    "decide if the text's STYLE matches the target emotion among:\n"
    "['anger', 'sadness', 'happiness', 'fear', 'surprise', 'disgust']\n"
    "Focus on tone/attitude, not content valence."
)
JUDGE_USER_TEMPLATE = (
    "Target emotion: {emotion}\nText:\n{text}\n"
    "Decide if the text's STYLE matches the target emotion.\n"
    "Return a compact JSON with keys exactly:\n"
    '{{"match": <0 or 1>, "reason": <short string>}}'
)


def user_message(scenario: str, event: str) -> str:
    """The user turn of every method: the neutral scenario, a newline, the valenced event."""
    return f"{scenario}\n{event}"


def chat(system: str, scenario: str, event: str) -> list[dict[str, str]]:
    """A system + user chat in the format of `tokenizer.apply_chat_template`."""
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user_message(scenario, event)},
    ]


def judge_messages(text: str, emotion: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_USER_TEMPLATE.format(emotion=emotion, text=text)},
    ]
