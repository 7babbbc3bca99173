"""Where sev-bench keeps downloads, converted models and trained scorers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$SEV_BENCH_CACHE`, else `~/.cache/sev_bench`."""
    return Path(os.environ.get("SEV_BENCH_CACHE", Path.home() / ".cache" / "sev_bench")).expanduser()
