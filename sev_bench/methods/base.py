"""The ControlMethod contract (DESIGN.md "Methods") and the method registry.

A method declares what it sends and what it changes, never how the engine runs:
- `messages(sample, target_emotion)`: the chat it sends for one SEV row;
- `interventions(artifact, target_emotion)`: InterventionSpecs for the hook layer (none for prompting);
- `prepare(context)`: loads or discovers the artifact (directions, circuits) `interventions` uses.
Hyper-parameters are declared in `params` (name -> Param) and arrive validated in `self.params`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class Param:
    type: type  # str, int, float or bool
    default: Any
    help: str = ""

    def coerce(self, name: str, value: Any) -> Any:
        """A value from YAML (already typed) or from `--set k=v` (a string) as this param's type."""
        value = self._typed(name, value)
        if self.type is float and not math.isfinite(value):  # nan / inf: no strength means anything there
            raise UserError(f"parameter {name}={value!r}: expected a finite number")
        return value

    def _typed(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and self.type is not str:
            text = value.strip().lower()
            if self.type is bool:
                if text in ("true", "1", "yes", "on"):
                    return True
                if text in ("false", "0", "no", "off"):
                    return False
                raise UserError(f"parameter {name}={value!r}: expected true or false")
            try:
                return self.type(value)
            except ValueError:
                raise UserError(f"parameter {name}={value!r}: expected {self.type.__name__}") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise UserError(f"parameter {name}={value!r}: expected {self.type.__name__}")
        return value


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


class ControlMethod:
    """Base class of every method. Subclasses set `name`, `kind`, `description`, `params` and override
    `messages` (and `prepare` / `interventions` when they change activations)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "prompt"  # "prompt" (no interventions), "steer" or "circuit"
    description: ClassVar[str] = ""
    backends: ClassVar[frozenset[str]] = frozenset({"hf"})
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **overrides: Any) -> None:
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise UserError(f"method {self.name!r} has no parameter {unknown[0]!r}; its parameters: {known}")
        self.params = {
            key: spec.coerce(key, overrides[key]) if key in overrides else spec.default
            for key, spec in type(self).params.items()
        }

    # The chat sent for one SEV row (a dict with scenario, event, valence, target_emotion, ...).
    def messages(self, sample: dict, target_emotion: str) -> list[dict[str, str]]:
        raise NotImplementedError

    def prepare(self, context: PrepareContext) -> Any:
        """Load (or discover, then cache) what `interventions` needs for this model: directions,
        circuits. Returns the artifact, with `path` and `sha256` attributes for the results; None for
        methods that only change the prompt."""
        return None

    def interventions(self, artifact: Any, target_emotion: str) -> list:
        return []


METHODS: Registry[ControlMethod] = Registry("method", "sev_bench.methods", ControlMethod)
