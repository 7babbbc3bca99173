"""`sev-bench leaderboard build`: validate every run dir under a leaderboard folder and write, from those
files alone, `README.md` (generated header with the submission guide, then one table per model),
`leaderboard.csv`, a static `index.html` (sortable tables, per-valence bar charts, no external URLs) and
`plots/` (PNG).

Rebuilding from the same files gives byte-identical output: no clock is read, every iteration is sorted,
floats are formatted to fixed digits and the plots carry no timestamps.

- `entry`: an accepted run (Entry) and the labels it shows (decoding, subset).
- `validation`: a run dir checked against the schema, the pinned SEV release and its own samples, or Refused.
- `ordering`: tables by (model, subset), rows ranked by fluent accuracy.
- `cells`: cell text shared by README.md and index.html.
- `markdown`, `csv_table`, `html_page`: the three generated files; `templates/`: the README header and the
  page's frame, style and script.
- `writer`: `build` (validate, then write every file and the plots).
"""

from __future__ import annotations

from .csv_table import CSV_COLUMNS, leaderboard_csv
from .entry import (
    BENCHMARK_DECODING,
    BENCHMARK_SPLIT,
    FULL_SPLIT,
    Entry,
    decoding_label,
    is_own_decoding,
    selection_label,
)
from .html_page import index_html
from .markdown import readme
from .ordering import group_slug, grouped, rank_key
from .validation import (
    EXCLUDED_DIRS,
    Refused,
    accuracy_difference,
    collect,
    find_run_dirs,
    read_samples,
    validate_run,
)
from .writer import GENERATED, build, write_plots

__all__ = [
    "BENCHMARK_DECODING",
    "BENCHMARK_SPLIT",
    "CSV_COLUMNS",
    "EXCLUDED_DIRS",
    "FULL_SPLIT",
    "GENERATED",
    "Entry",
    "Refused",
    "accuracy_difference",
    "build",
    "collect",
    "decoding_label",
    "find_run_dirs",
    "group_slug",
    "grouped",
    "index_html",
    "is_own_decoding",
    "leaderboard_csv",
    "rank_key",
    "read_samples",
    "readme",
    "selection_label",
    "validate_run",
    "write_plots",
]
