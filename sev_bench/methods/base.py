"""The ControlMethod contract (docs/methods.md, "Your own method") and the method registry.

A method declares what it sends and what it changes, never how the engine runs:
- `messages(sample, target_emotion)`: the chat it sends for one SEV row;
- `interventions(artifact, target_emotion)`: InterventionSpecs for the hook layer (none for prompting);
- `prepare(context)`: loads or discovers the artifact (directions, circuits) `interventions` uses.
Hyper-parameters are declared in `params` (name -> Param, with their type, default and constraints) and
arrive validated in `self.params`. `changes_activations` says whether the method acts on the model's
activations (interventions: only a backend with forward hooks runs it) or only on the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UserError
from ..prepare_context import PrepareContext  # noqa: F401  (part of the method contract)
from ..registry import Registry


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its type, default, help and the values it accepts (`choices`, or a number
    between `minimum` and `maximum`, bounds included); `coerce` enforces them all."""

    type: type  # str, int, float or bool
    default: Any
    help: str = ""
    choices: tuple = ()  # the only values accepted (empty: any value of the type)
    minimum: float | None = None
    maximum: float | None = None

    def coerce(self, name: str, value: Any) -> Any:
        """A value from YAML (already typed) or from `--set k=v` (a string) as this param's type, checked
        against the constraints."""
        value = self._typed(name, value)
        if self.type is float and not math.isfinite(value):  # nan / inf: no strength means anything there
            raise UserError(f"parameter {name}={value!r}: expected a finite number")
        if self.choices and value not in self.choices:
            raise UserError(f"parameter {name}={value!r}: expected one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise UserError(f"parameter {name}={value!r}: expected >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise UserError(f"parameter {name}={value!r}: expected <= {self.maximum}")
        return value

    def constraint(self) -> str:
        """The accepted values in words ("" when any value of the type goes)."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        bounds = [f">= {self.minimum}"] if self.minimum is not None else []
        bounds += [f"<= {self.maximum}"] if self.maximum is not None else []
        return " and ".join(bounds)

    def describe(self, name: str, value: Any) -> str:
        """One line for `sev-bench methods`: name, type, constraint, the value a config gives it, help."""
        constraint = self.constraint()
        line = f"{name} ({self.type.__name__}{', ' + constraint if constraint else ''}) = {value!r}"
        return line + (f" - {self.help}" if self.help else "")

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


class ControlMethod:
    """Base class of every method. Subclasses set `name`, `kind`, `description`, `params` and override
    `messages` (and, with `changes_activations = True`, `prepare` / `interventions`)."""

    name: ClassVar[str] = ""
    changes_activations: ClassVar[bool] = False  # True: `interventions` act on the model's activations
    kind: ClassVar[str] = "prompt"  # a label recorded in results: "prompt", "steer" or "circuit"
    description: ClassVar[str] = ""
    backends: ClassVar[frozenset[str]] = frozenset({"hf"})
    params: ClassVar[dict[str, Param]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A plug-in written before `changes_activations` existed said so by its kind alone.
        if "changes_activations" not in cls.__dict__ and "kind" in cls.__dict__:
            cls.changes_activations = cls.kind != "prompt"

    def describe_params(self) -> list[str]:
        """One line per parameter (`Param.describe`) with this instance's value, in declaration order."""
        return [spec.describe(name, self.params[name]) for name, spec in type(self).params.items()]

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
