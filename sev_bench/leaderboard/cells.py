"""The text of the board's cells, shared by README.md and index.html: percentages to one decimal, 95%
intervals, and the "fluent / raw" pair of a valence or emotion."""

from __future__ import annotations

from .entry import Entry


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def cell_pct(cell: dict | None) -> str:
    return pct(cell.get("acc") if cell else None)


def fluent_raw_pair(entry: Entry, block: str, name: str) -> str:
    """A group's cell as "fluent / raw" (%), "- / raw" for a run without fluency records."""
    return f"{cell_pct(entry.fluent_group(block, name))} / {cell_pct(entry.accuracy[block].get(name))}"


def ci_text(cell: dict) -> str:
    return f"{100 * cell['ci95'][0]:.1f}-{100 * cell['ci95'][1]:.1f}"
