"""`build`: validate every run dir under a leaderboard folder and write README.md, leaderboard.csv,
index.html and the PNGs in plots/."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import UserError
from ..plots import accuracy_by_valence_figure, heatmap_figure, write_png
from .csv_table import leaderboard_csv
from .entry import Entry
from .html_page import index_html
from .markdown import readme
from .ordering import group_slug, grouped
from .validation import collect

GENERATED = ("README.md", "leaderboard.csv", "index.html")  # the files `build` writes beside plots/


def build(root: str | Path = "leaderboards") -> tuple[list[Entry], list[tuple[str, str]], list[Path]]:
    """Validate every run dir under `root` and write README.md, leaderboard.csv, index.html and plots/.
    Returns (entries, refused, files written)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such leaderboard folder")
    entries, refused = collect(root)
    written = []
    for name, text in (
        ("README.md", readme(entries, refused)),
        ("leaderboard.csv", leaderboard_csv(entries)),
        ("index.html", index_html(entries, refused)),
    ):
        write_text_atomic(root / name, text)
        written.append(root / name)
    written += write_plots(entries, root / "plots")
    return entries, refused, written


def write_plots(entries: list[Entry], plots_dir: Path) -> list[Path]:
    """Per model group the accuracy-by-valence bars, per run the emotion x valence heatmap; PNGs of runs
    that are no longer on the board are removed."""
    written = []
    for group, members in grouped(entries):
        model, selection = group
        # fluent accuracy, the board's headline; a run without fluency records shows its raw accuracy, so labelled
        runs = [
            (entry.method, entry.fluent_accuracy)
            if entry.fluent_accuracy
            else (f"{entry.method} (raw)", entry.accuracy)
            for entry in members
        ]
        figure = accuracy_by_valence_figure(runs, f"{model} ({selection}): fluent accuracy by valence")
        written.append(write_png(figure, plots_dir / f"accuracy-by-valence_{group_slug(group)}.png"))
        for entry in members:
            title = f"{entry.method} on {model}: raw accuracy (%)"
            written.append(write_png(heatmap_figure(entry.accuracy, title), plots_dir / f"heatmap_{entry.slug}.png"))
    if plots_dir.is_dir():
        keep = {path.name for path in written}
        for stale in sorted(plots_dir.glob("*.png")):
            if stale.name not in keep:
                stale.unlink()
    return written
