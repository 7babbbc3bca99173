"""The contract of a generation engine (a backend): what the runner, discovery and the benchmarks use of it.

A backend class declares `Generator` as its base, names itself (`name`, what `--backend` takes), says
whether it can apply interventions (forward hooks), and implements `load` and `generate`; `close`, `info`
and `check_installed` have defaults here. `sev_bench.backends` maps backend names to these classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class GeneratorSettings:
    """How to load and run an engine; each backend uses what applies to it."""

    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 16
    config: Any = None  # a sev_bench.backends.hf.GenerationConfig (None: the benchmark's greedy default)
    seed: int = 0
    threads: int | None = None  # CPU only: torch's threads for hf (the caller sets them), vLLM's bound cores


class Generator(Protocol):
    """Greedy chat generation in batches, with the loaded model's tokenizer at hand."""

    name: ClassVar[str]  # the backend's name, as `--backend` takes it
    supports_interventions: ClassVar[bool]  # whether `generate` can apply InterventionSpecs (forward hooks)
    loaded: Any  # sev_bench.models.LoadedModel: tokenizer + model (weightless when the engine holds its own)
    batch_size: int  # rows decoded together (it may shrink on out-of-memory)
    new_token_count: int  # generated tokens so far, up to and including each reply's EOS (throughput)

    @classmethod
    def load(cls, model_spec: str, settings: GeneratorSettings) -> Generator:
        """Load `model_spec` (alias, local dir, GGUF file or hub id) and start the engine."""
        ...

    @property
    def device(self) -> Any:
        """Where the model runs (a torch device, or the engine's device type)."""
        ...

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],  # chats: role/content messages
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        interventions: Sequence = (),
    ) -> list[str]:
        """Replies to `conversations`, in order. `on_batch(indices, replies)` is called after each batch
        (for progress and incremental saving); `interventions` apply to every row while it generates."""
        ...

    @classmethod
    def check_installed(cls) -> None:
        """A one-line UserError when this engine cannot run here, checked before any data or model loads."""

    def close(self) -> None:
        """Free the engine's resources now (they are freed at interpreter exit anyway)."""

    def info(self) -> dict:
        """`spec.backend` of a run: the engine's name, version and settings."""
        return {"name": self.name, "batch_size": self.batch_size}
