"""A leaderboard entry: one accepted run dir's results.json, with the figures and labels the board shows
(fluent and raw accuracy, the decoding and subset labels, the scorer's agreement, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.hf import DEFAULT_MAX_NEW_TOKENS
from ..fluency import GATE_CHAT
from ..hashing import slug
from ..prompts import EMOTIONS, VALENCES

BENCHMARK_SPLIT = "test"
FULL_SPLIT = f"full {BENCHMARK_SPLIT} split"  # the selection label of a run on the whole split
BENCHMARK_DECODING = {"do_sample": False, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}


@dataclass
class Entry:
    """An accepted run: its results.json and where it lies; `group` is the table it goes in (model, subset)."""

    path: str  # run dir relative to the leaderboard dir, posix
    results: dict
    # Always true since runs without samples are refused; kept so the README and CSV columns stay as they were.
    samples_checked: bool
    group: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.group = (self.model, selection_label(self.spec["dataset"]))

    @property
    def spec(self) -> dict:
        return self.results["spec"]

    @property
    def accuracy(self) -> dict:
        return self.results["metrics"]["accuracy"]

    @property
    def model(self) -> str:
        return self.spec["model"]["id"]

    @property
    def method(self) -> str:
        return self.spec["method"]["name"]

    @property
    def neutral_gate(self) -> bool:
        """Whether the run's fluency verdicts come from the method-neutral gate (every reply's perplexity
        under the same neutral chat); older runs measured each reply under its own method's chat."""
        return (self.spec.get("fluency") or {}).get("perplexity_chat") == GATE_CHAT

    @property
    def fluent_accuracy(self) -> dict | None:
        """`metrics.accuracy_fluent` as a grouped block (overall, by valence, ...), or None (no fluency records,
        or records of the old, method-conditioned gate)."""
        block = self.results["metrics"].get("accuracy_fluent")
        usable = isinstance(block, dict) and fluent_cell(block) is not None and "overall" in block
        return block if usable and self.neutral_gate else None

    @property
    def fluent(self) -> dict | None:
        return fluent_cell(self.results["metrics"].get("accuracy_fluent")) if self.neutral_gate else None

    @property
    def fluent_share(self) -> float | None:
        """The share of replies that pass the fluency gate (`metrics.fluency.fluent_share`), or None."""
        value = (self.results["metrics"].get("fluency") or {}).get("fluent_share")
        return value if isinstance(value, (int, float)) and self.fluent is not None else None

    def fluent_group(self, block: str, name: str) -> dict | None:
        """One cell of the fluent block (`by_valence` / `by_emotion`), or None."""
        fluent = self.fluent_accuracy
        return (fluent.get(block) or {}).get(name) if fluent else None

    @property
    def scorer_agreement(self) -> float | None:
        agreement = self.spec["scorer"].get("agreement") or {}
        value = agreement.get("agreement")
        return value if isinstance(value, (int, float)) else None

    @property
    def own_decoding(self) -> bool:
        return is_own_decoding(self.spec["generation"])

    @property
    def decoding(self) -> str:
        return decoding_label(self.spec["generation"])

    @property
    def date(self) -> str:
        return str(self.results.get("created", ""))[:10]

    @property
    def config_hash(self) -> str:
        return str(self.spec["method"]["config_hash"])

    @property
    def slug(self) -> str:
        return slug(self.path.replace("/", "__"), keep="-._") or "run"


def fluent_cell(block) -> dict | None:
    """`metrics.accuracy_fluent` as one overall cell: a grouped block (its `overall`) or a cell."""
    if not isinstance(block, dict):
        return None
    cell = block.get("overall", block)
    return cell if isinstance(cell, dict) and isinstance(cell.get("acc"), (int, float)) else None


NOT_DECODING = ("chat_template_sha256", "chat_template_kwargs", "policy")  # beside the settings in spec.generation


def decoding_settings(generation: dict) -> dict:
    """A run's decoding settings: spec.generation without the chat template's hash and inputs and the policy."""
    return {k: v for k, v in generation.items() if k not in NOT_DECODING}


def is_own_decoding(generation: dict) -> bool:
    """The method declared its own decoding: `policy` says so (runs since the decoding policy was recorded),
    or the settings are not the benchmark's."""
    return generation.get("policy") == "method-declared" or decoding_settings(generation) != BENCHMARK_DECODING


def decoding_label(generation: dict) -> str:
    settings = decoding_settings(generation)
    parts = ["greedy" if not settings.get("do_sample") else "sampled", f"{settings.get('max_new_tokens')} tok"]
    parts += [f"{k}={settings[k]}" for k in sorted(settings) if k not in BENCHMARK_DECODING]
    return ", ".join(parts)


def selection_label(dataset: dict) -> str:
    selection = dataset.get("selection") or {}
    parts = []
    if selection.get("emotions") and list(selection["emotions"]) != list(EMOTIONS):
        parts.append("emotions " + "/".join(selection["emotions"]))
    if selection.get("valences") and list(selection["valences"]) != list(VALENCES):
        parts.append("valences " + "/".join(selection["valences"]))
    if selection.get("limit") is not None:
        parts.append(f"first {selection['limit']} rows, themes interleaved")
    split = dataset.get("split", BENCHMARK_SPLIT)
    return f"full {split} split" if not parts else f"{split} subset: " + ", ".join(parts)
