"""The circuit discovery's inputs: which train rows count (the directions' acceptance) and the prompts
built from them, emotion-instructed (steps 4-5) and neutral (step 6a)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import prompts
from ..backends.hf import render_prompt
from ..errors import UserError
from ..prompts import EMOTIONS, VALENCES
from .artifacts import complete_groups
from .circuit_config import CircuitConfig


@dataclass
class CircuitInputs:
    """The prompts every stage reads, built from the accepted train rows."""

    rows: list  # accepted rows
    emotions: object  # LongTensor [n]
    numbers: object  # LongTensor [n]: position in the (limited) train rows (seeds the random controls)
    in_group: object  # BoolTensor [n]
    groups: int
    groups_by_valence: dict = field(default_factory=dict)
    emotion_texts: list = field(default_factory=list)
    neutral_texts: list = field(default_factory=list)
    neutral_emotions: list = field(default_factory=list)  # per neutral prompt: emotion indices it counts for


def build_inputs(loaded, rows, accepted, config: CircuitConfig) -> CircuitInputs:
    """The accepted rows' emotion-instructed prompts, and one neutral prompt per (skeleton, valence) with
    the emotions it counts for."""
    import torch

    groups = complete_groups(rows, accepted)
    group_ids = {row["id"] for _, members in groups for row in members}
    numbered = [(n, row) for n, row in enumerate(rows) if accepted.get(row["id"])]
    chosen = [row for _, row in numbered]
    inputs = CircuitInputs(
        rows=chosen,
        emotions=torch.tensor([EMOTIONS.index(r["target_emotion"]) for r in chosen], dtype=torch.long),
        numbers=torch.tensor([n for n, _ in numbered], dtype=torch.long),
        in_group=torch.tensor([r["id"] in group_ids for r in chosen], dtype=torch.bool),
        groups=len(groups),
        groups_by_valence={v: sum(1 for (_, valence), _ in groups if valence == v) for v in VALENCES},
    )
    tokenizer = loaded.tokenizer
    for row in chosen:
        system = config.emotion_system_template.format(emotion=row["target_emotion"])
        inputs.emotion_texts.append(render_prompt(tokenizer, prompts.chat(system, row["scenario"], row["event"])))
    by_chat: dict[tuple[str, str], int] = {}
    for row in chosen:
        key = (row["skeleton_id"], row["valence"])
        if key not in by_chat:
            by_chat[key] = len(inputs.neutral_texts)
            chat = prompts.chat(config.neutral_system, row["scenario"], row["event"])
            inputs.neutral_texts.append(render_prompt(tokenizer, chat))
            inputs.neutral_emotions.append([])
        inputs.neutral_emotions[by_chat[key]].append(EMOTIONS.index(row["target_emotion"]))
    return inputs


def accepted_rows(directions, rows, config: CircuitConfig) -> dict[str, bool]:
    """Row id -> counted: every row with accept=all, else what the directions' elicitation accepted."""
    if config.accept == "all":
        return {row["id"]: True for row in rows}
    path = directions.path / "elicitation.jsonl"
    if not path.is_file():
        raise UserError(f"{directions.path} has no elicitation.jsonl; rediscover the directions with accept=scorer")
    accepted = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        accepted[record["id"]] = bool(record["accepted"])
    return accepted

