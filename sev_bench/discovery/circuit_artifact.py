"""The circuit artifact (folder): `circuit.safetensors` (`neurons` [6, L, d_ff] and `heads` [6, L, H]
selection masks, `dmu_mlp` [6, L, d_ff], `dmu_attn` [6, L, H*head_dim]), `circuit.json` (the selected
indices), `validation.csv`, `metadata.json` (written last, sealed), `report.md` + PNGs, and `stages/`.
Here: the `Circuit` a run modulates, loading and checking it, its key and cache folder, and writing its
files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__
from ..atomic import write_text_atomic
from ..errors import UserError
from ..hashing import file_sha256
from ..prompts import EMOTIONS
from .artifacts import cached_artifact_dir, check_model, key_digest, model_signature, read_artifact
from .circuit_config import KINDS, CircuitConfig
from .circuit_math import jaccard_matrix, mean_pairwise
from .stages.integration import PAPER_SHARES, circuit_budget, selection_shares

ARTIFACT_FORMAT = "sev-bench-circuit/1"
VALIDATION_COLUMNS = [
    "emotion",
    "kind",
    "layer",
    "mode",
    "selection",
    "k",
    "scale",
    "n",
    "delta_local",
    "delta_final",
    "clean_local",
    "clean_final",
]


@dataclass
class Circuit:
    path: Path
    tensors: dict  # neurons, heads (uint8 masks), dmu_mlp, dmu_attn
    metadata: dict

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]

    @property
    def num_layers(self) -> int:
        return self.tensors["heads"].shape[1]

    def results_info(self) -> dict:
        """What a run's results.json records about this circuit (`spec.method.artifact`): how head
        importance was read, the budget rule, and the shares of the model's heads and MLP neurons one
        emotion's circuit selects (from the masks; an artifact from before issue 14 read heads on the
        raw residual under the per-sublayer budget)."""
        config = self.metadata.get("config", {})
        return {
            "head_space": config.get("head_space", "residual"),
            "budget_rule": config.get("budget_rule", "per_sublayer"),
            "shares": selection_shares(self.tensors["neurons"], self.tensors["heads"]),
        }

    def modulation(self, emotion: str, scale: float) -> list[tuple[str, int, object]]:
        """[(site, layer, dense value)] of step 7 for one emotion: `scale * dmu` masked to the selected
        neurons (mlp_neuron) and heads' slices (attn_head); zeros elsewhere, so adding it leaves every
        other channel bit-identical."""
        e = EMOTIONS.index(emotion)
        head_dim = self.metadata["architecture"]["head_dim"]
        result = []
        for layer in range(self.num_layers):
            neurons = self.tensors["neurons"][e, layer].bool()
            if bool(neurons.any()):
                result.append(("mlp_neuron", layer, scale * self.tensors["dmu_mlp"][e, layer] * neurons))
            heads = self.tensors["heads"][e, layer].bool()
            if bool(heads.any()):
                channels = heads.repeat_interleave(head_dim)
                result.append(("attn_head", layer, scale * self.tensors["dmu_attn"][e, layer] * channels))
        return result


def load_circuit(path: str | Path) -> Circuit:
    tensors, metadata = read_artifact(path, ARTIFACT_FORMAT, "circuit.safetensors", "sev-bench discover circuit")
    return Circuit(Path(path), tensors, metadata)


def check_circuit(circuit: Circuit, loaded, dataset_sha256: dict, scorer) -> None:
    """Refuse (one line) a circuit made for another model, dataset version or acceptance scorer."""
    meta = circuit.metadata
    check_model(meta, loaded, circuit.path, what="circuit")
    if meta["dataset_sha256"] != dataset_sha256:
        made = meta["dataset_sha256"].get("train", "?")[:12]
        given = dataset_sha256.get("train", "?")[:12]
        raise UserError(
            f"the circuit in {circuit.path} was made from another SEV version (train sha256 {made}…, this one "
            f"{given}…); rediscover it"
        )
    made_with = meta.get("scorer_sha256")
    if meta["config"]["accept"] == "scorer":
        given = getattr(scorer, "sha256", None)
        if given != made_with:
            made_id = (meta.get("scorer") or {}).get("id", "?")
            raise UserError(
                f"the circuit in {circuit.path} kept the train replies scorer {made_id} (sha256 {made_with[:12]}…) "
                f"accepted, not this run's scorer {getattr(scorer, 'id', '?')} (sha256 {str(given)[:12]}…); "
                "rediscover it with this scorer"
            )


def circuit_key(loaded, dataset_sha256, scorer_sha256, directions_sha256, config: CircuitConfig, dtype: str) -> dict:
    """The circuit's identity: what the analysis stages depend on (`analysis_key`: hashed into the default
    folder name and the stages' cache digest), plus the integration settings (`integration`: budget rule,
    quotas, caps), which only the cheap last step depends on."""
    key = {
        "format": ARTIFACT_FORMAT,
        "model": model_signature(loaded),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "dtype_requested": dtype,
        "dataset_sha256": dataset_sha256,
        "scorer_sha256": scorer_sha256 if config.accept == "scorer" else None,
        "directions_sha256": directions_sha256,
        "config": config.analysis(),
        "integration": config.integration(),
    }
    return json.loads(json.dumps(key))  # as it reads back from key.json / metadata.json (lists, not tuples)


def analysis_key(key: dict) -> dict:
    """The part of a circuit key the analysis stages depend on (all but the integration settings)."""
    return {k: v for k, v in key.items() if k != "integration"}


def default_circuit_dir(key: dict) -> Path:
    """The cache folder of the analysis behind `key` (circuits that differ only in their integration
    settings share it: the stages are reused, the artifact is rewritten)."""
    return cached_artifact_dir("circuits", key["model"]["id"], key_digest(analysis_key(key)))



# ----------------------------------------------------------------------------- writing the artifact


def selected_indices(neuron_masks, head_masks) -> dict:
    """circuit.json: per emotion and kind, layer -> the selected indices (layers with none left out)."""
    import torch

    def per_layer(masks):
        return {
            str(layer): torch.nonzero(masks[layer]).flatten().tolist()
            for layer in range(masks.shape[0])
            if bool(masks[layer].any())
        }

    return {
        emotion: {"neurons": per_layer(neuron_masks[e]), "heads": per_layer(head_masks[e])}
        for e, emotion in enumerate(EMOTIONS)
    }


def write_validation_csv(path: Path, records: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=VALIDATION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
    write_text_atomic(path, buffer.getvalue())


def circuit_metadata(
    *,
    key: dict,
    job,
    provenance: dict,
    rows_per_emotion,
    validation_layers: dict,
    masks: tuple,
    counts: dict,
    tensor_path: Path,
    timings: dict,
) -> dict:
    """metadata.json (before its seal). `job` is the stages' CircuitJob; `provenance` holds dataset_sha256,
    scorer (its info or None), directions (path and sha256) and train_rows; `masks` is (neurons, heads);
    `timings` is kept by reference (the report's time is added to it afterwards)."""
    loaded, config, inputs = job.loaded, job.config, job.inputs
    neuron_masks, head_masks = masks
    jaccard = {"heads": jaccard_matrix(head_masks), "neurons": jaccard_matrix(neuron_masks)}
    d_ff = loaded.model.config.intermediate_size
    return {
        "format": ARTIFACT_FORMAT,
        "key": key,
        "model": key["model"],
        "dataset_sha256": provenance["dataset_sha256"],
        "scorer": provenance["scorer"],
        "scorer_sha256": key["scorer_sha256"],
        "directions": provenance["directions"],
        "config": asdict(config),
        "integration": config.integration(),
        "emotions": list(EMOTIONS),
        "architecture": {
            "num_layers": loaded.num_layers,
            "num_heads": loaded.num_heads,
            "head_dim": loaded.head_dim,
            "intermediate_size": d_ff,
        },
        "train_rows": provenance["train_rows"],
        "accepted_rows": len(inputs.rows),
        "rows_per_emotion": {e: int(c) for e, c in zip(EMOTIONS, rows_per_emotion.tolist())},
        "groups": inputs.groups,
        "groups_by_valence": inputs.groups_by_valence,
        "neutral_prompts": len(inputs.neutral_texts),
        "reference_layers": job.reference_layers,
        "validation_layers": {f"{EMOTIONS[e]}/{kind}": layers for (e, kind), layers in validation_layers.items()},
        "head_space": config.head_space,
        "budget": _budget_metadata(config, (loaded.num_layers, loaded.num_heads, d_ff), masks, counts),
        "counts_per_layer": counts,
        "jaccard": {
            kind: {"matrix": m.tolist(), "mean": mean_pairwise(m)[0], "std": mean_pairwise(m)[1]}
            for kind, m in jaccard.items()
        },
        "tensors_sha256": file_sha256(tensor_path),
        "sev_bench_version": __version__,
        "timings": timings,
    }


def _budget_metadata(config: CircuitConfig, shape: tuple[int, int, int], masks: tuple, counts: dict) -> dict:
    """The budget rule, K per kind, what was selected and the shares (`shape`: layers, heads, d_ff)."""
    k_mlp, k_attn = circuit_budget(config, *shape)
    return {
        "rule": config.budget_rule,
        "neurons": k_mlp,
        "heads": k_attn,
        "total": k_mlp + k_attn,
        "selected": {kind: sum(counts[EMOTIONS[0]][kind]) for kind in KINDS},  # less where the caps bind
        # per emotion: selected / all the model has (heads: layers x heads, neurons: layers x d_ff)
        "shares": selection_shares(*masks),
        "paper_shares": PAPER_SHARES,
    }
