"""The circuit discovery's settings (`CircuitConfig`) and the names its stages and artifact use."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import prompts
from ..errors import UserError
from .artifacts import ACCEPT_MODES

KINDS = ("neurons", "heads")
# head_space -> the capture site the head importance (and the heads' validation score) reads.
HEAD_SPACES = {"mlp_input": "mlp_in", "residual": "resid_mid"}
BUDGET_RULES = ("paper_shares", "per_sublayer")


@dataclass(frozen=True)
class CircuitConfig:
    """Discovery settings. Everything but the integration block is part of the analysis key (the cache
    folder); the integration settings only redo the cheap last stage when they change."""

    accept: str = "all"
    limit: int | None = None  # the first N train rows (themes interleaved); None = all
    emotion_system_template: str = prompts.PROMPTING_SYSTEM_TEMPLATE  # steps 4-5 (as the directions)
    neutral_system: str = prompts.NEUTRAL_SYSTEM  # step 6a: no emotion in the prompt
    alphas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    validation_k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    validation_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    validation_layers: str = "auto"  # auto: per emotion and kind, the layer of largest I_{L,p}; or "a,b"
    seed: int = 0  # random controls
    # step 4b: where head importance is read (module docstring): the MLP's input, as the authors, or the
    # raw residual
    head_space: str = "mlp_input"
    # integration (step 6b)
    budget_rule: str = "paper_shares"  # or per_sublayer (budget_per_sublayer x 2L, split by neuron_share)
    budget_per_sublayer: float = 10.0  # per_sublayer only
    neuron_share: float = 0.7  # per_sublayer only
    min_neurons: int = 4
    min_heads: int = 2
    cap_fraction: float = 0.4

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_MODES:
            raise UserError(f"accept={self.accept!r}: expected one of {', '.join(ACCEPT_MODES)}")
        if self.head_space not in HEAD_SPACES:
            raise UserError(f"head_space={self.head_space!r}: expected one of {', '.join(HEAD_SPACES)}")
        if self.budget_rule not in BUDGET_RULES:
            raise UserError(f"budget_rule={self.budget_rule!r}: expected one of {', '.join(BUDGET_RULES)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("the discovery limit must be >= 1 (or absent for the whole train split)")
        if not 0 < self.neuron_share < 1:
            raise UserError(f"neuron_share={self.neuron_share}: expected a share strictly between 0 and 1")
        if self.budget_per_sublayer <= 0:
            raise UserError("the budget per sublayer must be > 0")
        if not 0 < self.cap_fraction <= 1:
            raise UserError("cap_fraction must be in (0, 1]")
        if self.min_neurons < 0 or self.min_heads < 0:
            raise UserError("the minimum quotas must be >= 0")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise UserError("alphas must be positive")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "validation_k", tuple(int(k) for k in self.validation_k))
        object.__setattr__(self, "validation_scales", tuple(float(s) for s in self.validation_scales))

    INTEGRATION = ("budget_rule", "budget_per_sublayer", "neuron_share", "min_neurons", "min_heads", "cap_fraction")

    def analysis(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.INTEGRATION}

    def integration(self) -> dict:
        return {k: (v if isinstance(v := getattr(self, k), str) else float(v)) for k in self.INTEGRATION}
