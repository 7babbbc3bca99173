"""The prompt-only methods: `none` (no emotion asked for) and `prompting` (the paper's step 1)."""

from __future__ import annotations

from .. import prompts
from .base import METHODS, ControlMethod, Param


@METHODS.register("none")
class NoControl(ControlMethod):
    """One chat per event, the same for all six targets: its accuracy for an emotion is the model's natural
    rate of it, and its overall accuracy is at most 1/6, (1 - the share of replies the scorer calls `none`) / 6
    (exactly 1/6 only under a scorer without a `none` label)."""

    name = "none"
    kind = "prompt"
    description = "no emotion asked for (neutral system prompt): the model's natural emotion rate"
    backends = frozenset({"hf", "vllm"})
    params = {"system_prompt": Param(str, prompts.NEUTRAL_SYSTEM, "system prompt (no emotion in it)")}

    def messages(self, sample: dict, target_emotion: str) -> list[dict[str, str]]:
        return prompts.chat(self.params["system_prompt"], sample["scenario"], sample["event"])


@METHODS.register("prompting")
class Prompting(ControlMethod):
    name = "prompting"
    kind = "prompt"
    description = "the paper's prompt: 'Always reply in {emotion}.' in the system prompt"
    backends = frozenset({"hf", "vllm"})
    params = {
        "system_template": Param(
            str, prompts.PROMPTING_SYSTEM_TEMPLATE, "system prompt; {emotion} is the target emotion"
        )
    }

    def messages(self, sample: dict, target_emotion: str) -> list[dict[str, str]]:
        system = self.params["system_template"].format(emotion=target_emotion)
        return prompts.chat(system, sample["scenario"], sample["event"])
