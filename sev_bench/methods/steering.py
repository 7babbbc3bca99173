"""`steering`: add a context-agnostic emotion direction to decoder-layer outputs (docs/protocol.md, step 3).

    h <- h + alpha * RMS(h) * v_e^(l)    for each layer l in the range,

at each row's last prompt token and at every generated token. The directions come from
`sev-bench discover directions` (discovered first, then cached, when the run finds none).
"""

from __future__ import annotations

from .. import prompts
from ..discovery.directions import ACCEPT_MODES, check_model, load_directions, obtain_directions
from ..errors import UserError
from ..interventions import InterventionSpec
from .base import METHODS, ControlMethod, Param, PrepareContext

# The protocol's layer range, 11..20 of Llama-3.2-3B's 28 layers, as fractions of depth.
PROTOCOL_LAYERS = (11 / 28, 20 / 28)


def resolve_layers(spec: str, num_layers: int) -> list[int]:
    """`auto` (the protocol's range scaled to this depth), `A-B` (inclusive) or `a,b,c`."""
    text = spec.strip()
    try:
        if text == "auto":
            first, last = (round(fraction * num_layers) for fraction in PROTOCOL_LAYERS)
            layers = list(range(first, last + 1))
        elif "-" in text:
            first, _, last = text.partition("-")
            layers = list(range(int(first), int(last) + 1))
        else:
            layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"layers={spec!r}: expected auto, A-B or a comma list of layer numbers") from None
    if not layers or any(not 0 <= layer < num_layers for layer in layers):
        raise UserError(f"layers={spec!r}: this model has layers 0..{num_layers - 1}")
    return layers


@METHODS.register("steering")
class Steering(ControlMethod):
    name = "steering"
    changes_activations = True
    kind = "steer"
    description = "adds alpha * RMS(h) * (emotion direction) to decoder-layer outputs (protocol step 3)"
    params = {
        "alpha": Param(float, 8.0, "steering strength (0 = no change)"),
        "layers": Param(str, "auto", "auto (protocol: 11-20 of 28, scaled to depth), A-B, or a,b,c"),
        "scale": Param(
            str, "rms", "rms: multiply by each token's RMS(h); none: add alpha * v as is", choices=("rms", "none")
        ),
        "position": Param(
            str, "mlp", "directions read after the layer (mlp) or after attention (attn)", choices=("mlp", "attn")
        ),
        "system_prompt": Param(
            str, prompts.NEUTRAL_SYSTEM, "system prompt (no emotion in it; the same chat as none and circuit)"
        ),
        "accept": Param(
            str, "all", "discovery: which train replies count (all, or scorer-accepted only)", choices=ACCEPT_MODES
        ),
        "discovery_limit": Param(int, 0, "discovery: use the first N train rows (0 = all)", minimum=0),
        "directions": Param(str, "", "a directions artifact dir (default: the cache for this model)"),
    }

    def messages(self, sample: dict, target_emotion: str) -> list[dict[str, str]]:
        return prompts.chat(self.params["system_prompt"], sample["scenario"], sample["event"])

    def prepare(self, context: PrepareContext):
        resolve_layers(self.params["layers"], context.loaded.num_layers)  # a bad range fails before discovery
        if self.params["directions"]:
            directions = load_directions(self.params["directions"])
            check_model(directions.metadata, context.loaded, directions.path)
        else:
            directions, _ = obtain_directions(
                context, accept=self.params["accept"], limit=self.params["discovery_limit"] or None
            )
        return directions

    def interventions(self, artifact, target_emotion: str) -> list:
        alpha = self.params["alpha"]
        norm = "rms" if self.params["scale"] == "rms" else "none"
        return [
            InterventionSpec(
                "resid_post",
                layer,
                "add",
                alpha * artifact.vector(self.params["position"], target_emotion, layer),
                positions=frozenset({"last_prompt", "generated"}),
                norm=norm,
            )
            for layer in resolve_layers(self.params["layers"], artifact.num_layers)
        ]
