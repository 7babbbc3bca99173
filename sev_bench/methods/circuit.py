"""`circuit`: modulate the discovered emotion circuit (docs/protocol.md, step 7).

For the target emotion's selected neurons N_l and heads H_l (`sev-bench discover circuit`):

    a[N_l]  += scale * dmu_mlp[e, l][N_l]            MLP down-projection input, last position of every
                                                    forward call (the last prompt token, then each new token)
    x[H_l]  += scale * (dmu_attn[e, l] masked to H_l) attention output-projection input, every position

No emotion in the prompt. `scale` (the paper's lambda) is 1.0 by default; tune it on dev with
`sev-bench tune --method circuit --grid scale=...`. The circuit is discovered first, then cached, when
the run finds none for this model and these inputs. Its heads are ranked as the authors rank them (on
the MLP's input, `head_space=mlp_input`) and its size keeps the paper's shares of heads and MLP neurons
(`budget_rule=paper_shares`); `head_space=residual` and `budget_rule=per_sublayer` give the earlier
discovery (see `sev_bench.discovery.circuit`). The run's results.json records the shares selected.
"""

from __future__ import annotations

from .. import prompts
from ..data import dataset_fingerprint
from ..discovery.circuit import (
    BUDGET_RULES,
    HEAD_SPACES,
    CircuitConfig,
    check_circuit,
    load_circuit,
    obtain_circuit,
)
from ..discovery.directions import ACCEPT_MODES
from ..interventions import InterventionSpec
from .base import METHODS, ControlMethod, Param, PrepareContext


@METHODS.register("circuit")
class CircuitModulation(ControlMethod):
    name = "circuit"
    changes_activations = True
    kind = "circuit"
    description = "adds scale * (emotion difference vectors) to the emotion's circuit of neurons and heads (step 7)"
    params = {
        "scale": Param(float, 1.0, "modulation strength lambda (0 = no change)"),
        "system_prompt": Param(str, prompts.NEUTRAL_SYSTEM, "system prompt (no emotion in it)"),
        "accept": Param(
            str, "all", "discovery: which train replies count (all, or scorer-accepted only)", choices=ACCEPT_MODES
        ),
        "discovery_limit": Param(int, 0, "discovery: use the first N train rows (0 = all)", minimum=0),
        "head_space": Param(
            str,
            "mlp_input",
            "discovery: head importance on the MLP's input (mlp_input, the authors') or residual",
            choices=tuple(HEAD_SPACES),
        ),
        "budget_rule": Param(
            str,
            "paper_shares",
            "discovery: the paper's shares of heads and neurons, or per_sublayer (10 x 2L)",
            choices=BUDGET_RULES,
        ),
        "circuit": Param(str, "", "a circuit artifact dir (default: the cache for this model)"),
    }

    def messages(self, sample: dict, target_emotion: str) -> list[dict[str, str]]:
        return prompts.chat(self.params["system_prompt"], sample["scenario"], sample["event"])

    def prepare(self, context: PrepareContext):
        if self.params["circuit"]:
            circuit = load_circuit(self.params["circuit"])
        else:
            config = CircuitConfig(
                accept=self.params["accept"],
                limit=self.params["discovery_limit"] or None,
                head_space=self.params["head_space"],
                budget_rule=self.params["budget_rule"],
            )
            circuit, _ = obtain_circuit(context, config)
        check_circuit(circuit, context.loaded, dataset_fingerprint(context.data_dir), context.scorer)
        parameter = next(context.loaded.model.parameters())
        for name in ("dmu_mlp", "dmu_attn"):  # once, not at every hook call
            circuit.tensors[name] = circuit.tensors[name].to(device=parameter.device, dtype=parameter.dtype)
        for name in ("neurons", "heads"):
            circuit.tensors[name] = circuit.tensors[name].to(device=parameter.device)
        return circuit

    def interventions(self, artifact, target_emotion: str) -> list:
        positions = {
            "mlp_neuron": frozenset({"last_prompt", "generated"}),
            "attn_head": frozenset({"prompt", "generated"}),
        }
        return [
            InterventionSpec(site, layer, "add", value, positions=positions[site])
            for site, layer, value in artifact.modulation(target_emotion, self.params["scale"])
        ]
