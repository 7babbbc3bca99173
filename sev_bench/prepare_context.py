"""`PrepareContext`: what a method's `prepare` gets to load or build its artifact.

A module of its own (not in `sev_bench.methods`) so discovery can build one without importing the methods
package, whose methods import discovery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PrepareContext:
    """What `ControlMethod.prepare` may use to load or build its artifact for the loaded model."""

    loaded: Any  # sev_bench.models.LoadedModel
    scorer: Any  # the run's scorer (discovery may filter replies with it)
    data_dir: str | None
    dtype: str = "auto"
    batch_size: int = 16
    progress: bool = True
    log: Callable[[str], None] = field(default=print)
