"""What the circuit stages share: `CircuitJob`, the inputs every stage reads, and `Stage`, one entry of
the ordered stage table that `discover_circuit` runs through the stage cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..circuit_config import CircuitConfig
from ..circuit_inputs import CircuitInputs


@dataclass(frozen=True)
class CircuitJob:
    """One discovery's fixed inputs: the model, the settings, the prompts, the emotion directions and the
    reference direction v_ref built from them, and the batching limits."""

    loaded: Any  # sev_bench.models.LoadedModel
    config: CircuitConfig
    inputs: CircuitInputs
    directions: dict  # "attn" / "mlp" -> [6, L, d] float unit directions
    v_ref: Any  # [6, d]: step 6a's reference direction per emotion
    reference_layers: list[int]  # the layers v_ref averages
    batch_size: int = 16
    max_rows: int = 128  # copies per batched decode call


@dataclass(frozen=True)
class Stage:
    """One cached stage. `compute(job, earlier, bar)` returns (tensors, info): the tensors saved as
    `stages/<name>.safetensors`, the JSON-able info as `stages/<name>.json`; `earlier` maps each earlier
    stage's name to its tensors (computed or reused)."""

    name: str
    unit: str  # what the progress bar counts
    describe: Callable[[CircuitJob], str]  # the log line when the stage runs
    total: Callable[[CircuitJob, dict], int]  # the progress bar's total: (job, earlier) -> count
    compute: Callable[[CircuitJob, dict, Any], tuple[dict, dict]]
