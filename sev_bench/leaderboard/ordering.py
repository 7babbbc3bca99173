"""The board's order: entries grouped by (model, subset), full-split tables first, and ranked within a
table by fluent accuracy (runs without fluency records last); and the file-name slug of a table."""

from __future__ import annotations

from ..hashing import slug
from .entry import FULL_SPLIT, Entry


def group_slug(group: tuple[str, str]) -> str:
    model, selection = group
    return slug(model if selection == FULL_SPLIT else f"{model}__{selection}", keep="-._") or "run"


def rank_key(entry) -> tuple:
    """The board's order within a table: fluent accuracy, best first; a run without fluency records after
    every run that has them; ties (and runs without fluency records) by raw accuracy, then by name."""
    fluent = entry.fluent
    return (
        fluent is None,
        -fluent["acc"] if fluent else 0.0,
        -entry.accuracy["overall"]["acc"],
        entry.method,
        entry.path,
    )


def grouped(entries: list[Entry]) -> list[tuple[tuple[str, str], list[Entry]]]:
    """Entries by (model, selection): full-split groups first, then subsets, each sorted by name; entries by
    `rank_key` (fluent accuracy, best first; runs without fluency records last)."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    return [
        (key, sorted(groups[key], key=rank_key))
        for key in sorted(groups, key=lambda group: (group[1] != FULL_SPLIT, group))
    ]
