"""Where sev-bench keeps downloads, converted models and trained scorers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$SEV_BENCH_CACHE`, else `~/.cache/sev_bench`."""
    return Path(os.environ.get("SEV_BENCH_CACHE", Path.home() / ".cache" / "sev_bench")).expanduser()


def shown_path(path) -> str:
    """`path` as written into result and artifact files: relative to `$SEV_BENCH_CACHE` when it lies in
    the cache, so that those files do not carry one machine's paths; otherwise as given."""
    try:
        return "$SEV_BENCH_CACHE/" + Path(path).resolve().relative_to(cache_dir().resolve()).as_posix()
    except ValueError:
        return str(path)
