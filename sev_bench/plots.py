"""Plots of results (matplotlib, Agg, no pyplot state): accuracy by valence per method with 95% intervals,
and the emotion x valence accuracy heatmap of one run.

Deterministic: the same results give the same PNG bytes (no timestamp or software tag in the metadata,
fixed size, dpi and colours), so a rebuilt leaderboard is byte-identical.

matplotlib and numpy are imported inside the functions (marked "heavy"): importing the leaderboard package
(which imports this module) to validate runs should not pay their start-up cost.
"""

from __future__ import annotations

import io
from pathlib import Path

from .atomic import write_bytes_atomic
from .prompts import EMOTIONS, VALENCES

PNG_METADATA = {"Software": None}  # matplotlib writes its version here by default; PNGs carry no date
SVG_METADATA = {"Date": None, "Creator": None}
RC = {"svg.hashsalt": "sev-bench", "svg.fonttype": "path", "font.family": "DejaVu Sans", "font.size": 9}
COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#222255")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # heavy: see the module docstring

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_bytes(fig, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes, without timestamps or version tags."""
    import matplotlib  # heavy: see the module docstring

    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, metadata=PNG_METADATA if fmt == "png" else SVG_METADATA)
    return buffer.getvalue()


def _cells(accuracy: dict) -> list[tuple[str, dict | None]]:
    return [(v, accuracy["by_valence"].get(v)) for v in VALENCES] + [("overall", accuracy["overall"])]


def accuracy_by_valence_figure(runs: list[tuple[str, dict]], title: str):
    """Grouped bars: one group per valence (and overall), one bar per run (label, metrics.accuracy), with
    the 95% Wilson interval as an error bar."""
    import matplotlib  # heavy: see the module docstring

    with matplotlib.rc_context(RC):
        groups = [name for name, _ in _cells(runs[0][1])] if runs else list(VALENCES)
        fig = _figure(max(5.0, 1.2 + 0.45 * len(groups) * max(1, len(runs))), 3.4)
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(runs))
        for index, (label, accuracy) in enumerate(runs):
            xs, heights, low_err, high_err = [], [], [], []
            for position, (_, cell) in enumerate(_cells(accuracy)):
                if not cell or cell.get("acc") is None:
                    continue
                acc = 100 * cell["acc"]
                xs.append(position - 0.4 + width * (index + 0.5))
                heights.append(acc)
                low_err.append(max(0.0, acc - 100 * cell["ci95"][0]))
                high_err.append(max(0.0, 100 * cell["ci95"][1] - acc))
            ax.bar(
                xs,
                heights,
                width * 0.92,
                yerr=[low_err, high_err],
                capsize=2,
                label=label,
                color=COLOURS[index % len(COLOURS)],
                error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
            )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.axhline(100 / len(EMOTIONS), color="#999999", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
        ax.set_axisbelow(True)
        if runs:
            ax.legend(loc="upper right", fontsize=8, frameon=False)
    return fig


def heatmap_figure(accuracy: dict, title: str):
    """Accuracy (%) per target emotion (rows) x valence context (columns), annotated with the value."""
    import matplotlib  # heavy: see the module docstring
    import numpy as np

    with matplotlib.rc_context(RC):
        valences = [v for v in VALENCES if v in accuracy["by_valence_emotion"]]
        emotions = [e for e in EMOTIONS if e in accuracy["by_emotion"]]
        values = np.full((len(emotions), len(valences)), np.nan)
        for column, valence in enumerate(valences):
            for row, emotion in enumerate(emotions):
                cell = accuracy["by_valence_emotion"][valence].get(emotion)
                if cell and cell.get("acc") is not None:
                    values[row, column] = 100 * cell["acc"]
        fig = _figure(4.2, 3.6)
        ax = fig.add_subplot()
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(valences)), valences)
        ax.set_yticks(range(len(emotions)), emotions)
        for row in range(len(emotions)):
            for column in range(len(valences)):
                value = values[row, column]
                if not np.isnan(value):
                    ax.text(
                        column,
                        row,
                        f"{value:.0f}",
                        ha="center",
                        va="center",
                        color="white" if value < 60 else "black",
                        fontsize=8,
                    )
        fig.colorbar(image, ax=ax, label="accuracy (%)")
        ax.set_title(title, fontsize=9)
    return fig


def confusion_figure(confusion: dict, title: str):
    """A scorer's confusion matrix (rows = target emotion, columns = predicted label), coloured by the row
    share and annotated with the counts."""
    import matplotlib  # heavy: see the module docstring
    import numpy as np

    with matplotlib.rc_context(RC):
        counts = np.asarray(confusion["matrix"], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        fig = _figure(1.6 + 0.62 * counts.shape[1], 1.2 + 0.45 * counts.shape[0])
        ax = fig.add_subplot()
        image = ax.imshow(100 * shares, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(counts.shape[1]), confusion["columns"], rotation=30, ha="right")
        ax.set_yticks(range(counts.shape[0]), confusion["rows"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("target")
        for row in range(counts.shape[0]):
            for column in range(counts.shape[1]):
                ax.text(
                    column,
                    row,
                    f"{counts[row, column]:.0f}",
                    ha="center",
                    va="center",
                    color="white" if shares[row, column] < 0.6 else "black",
                    fontsize=8,
                )
        fig.colorbar(image, ax=ax, label="% of the target's replies")
        ax.set_title(title, fontsize=9)
    return fig


def write_png(fig, path: Path) -> Path:
    write_bytes_atomic(path, figure_bytes(fig, "png"))
    return path


def write_run_plots(results: dict, run_dir: Path) -> list[Path]:
    """A finished run's plots, into `run_dir/plots/`: accuracy by valence and the emotion x valence heatmap."""
    accuracy = results["metrics"]["accuracy"]
    spec = results["spec"]
    name = f"{spec['method']['name']} on {spec['model']['id']}"
    out = Path(run_dir) / "plots"
    return [
        write_png(
            accuracy_by_valence_figure([(spec["method"]["name"], accuracy)], name), out / "accuracy_by_valence.png"
        ),
        write_png(heatmap_figure(accuracy, f"{name}: accuracy (%)"), out / "heatmap.png"),
    ]
