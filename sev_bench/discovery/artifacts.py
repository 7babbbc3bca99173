"""What the directions and the circuit discoveries share: the model signature an artifact is made for,
reading and sealing an artifact folder, the cache folder named after a key's digest, the per-stage cache
of the circuit discovery, the complete (skeleton, valence) groups, and the progress bar.

torch and safetensors are imported inside the functions that need them: importing this module (the CLI
does at start-up) stays fast."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_json_atomic
from ..errors import UserError
from ..hashing import file_sha256, slug
from ..paths import cache_dir
from ..prompts import EMOTIONS

ACCEPT_MODES = ("all", "scorer")
# Below this many complete groups a centroid is an average of too few contrasts to mean much (the paper
# had about 450); discovery stops instead of saving directions that are mostly noise.
MIN_GROUPS = 8
UNSEALED = ("sha256", "timings")  # the seal itself, and wall times (a rerun of the same discovery differs there)


# ----------------------------------------------------------------------------- the model an artifact is for


def model_signature(loaded) -> dict:
    config = loaded.model.config
    return {
        "id": loaded.model_id,
        "revision": loaded.revision,
        "architecture": config.model_type,
        "num_layers": loaded.num_layers,
        "hidden_size": config.hidden_size,
    }


def check_model(metadata: dict, loaded, where: Path, what: str = "directions") -> None:
    """Refuse an artifact made for another model (same weights under another name are accepted)."""
    made_for, given = metadata["model"], model_signature(loaded)
    keys = ("revision", "architecture", "num_layers", "hidden_size")
    if any(made_for[key] != given[key] for key in keys):
        raise UserError(
            f"the {what} in {where} were made for model {made_for['id']} ({made_for['revision']}), "
            f"not {given['id']} ({given['revision']}); discover them for this model"
        )


# ----------------------------------------------------------------------------- reading and sealing an artifact


def read_artifact(path: str | Path, artifact_format: str, tensors_file: str, command: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a discovery artifact dir, checked: metadata.json present and readable, the
    expected format, and the tensors file matching the sha256 the metadata recorded. Any failure is a
    one-line UserError naming `command` (the discovery that makes such an artifact)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise UserError(f"{path} is not an artifact of `{command}` (no metadata.json); run `{command}`")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} is unreadable ({exc})") from None
    if metadata.get("format") != artifact_format:
        raise UserError(f"{path}: unknown artifact format {metadata.get('format')!r}; expected {artifact_format}")
    tensor_path = path / tensors_file
    digest = file_sha256(tensor_path) if tensor_path.is_file() else None
    if digest != metadata.get("tensors_sha256"):
        raise UserError(f"{tensor_path} is missing or does not match its metadata; rerun the discovery")
    if metadata.get("sha256") != artifact_sha256(metadata):
        raise UserError(
            f"{meta_path} does not match the artifact's sha256 (edited, or made by an older sev-bench); "
            "rerun the discovery"
        )
    return load_file(str(tensor_path)), metadata


def artifact_sha256(metadata: dict) -> str:
    """An artifact's identity: one sha256 over its metadata (which holds its tensors file's sha256) but
    the UNSEALED fields, so neither the tensors nor what the metadata says of them (the model they were
    made for, their inputs) can change without it."""
    body = {key: value for key, value in metadata.items() if key not in UNSEALED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()


def seal(metadata: dict) -> dict:
    """`metadata` with its `sha256` (see `artifact_sha256`): call it last, right before writing it."""
    metadata["sha256"] = artifact_sha256(metadata)
    return metadata


def write_tensors(path: Path, tensors: dict, staging: Path | None = None, metadata: dict | None = None) -> None:
    """Save `tensors` to `path` through a staging file (default `<path>.partial`), so a killed write never
    leaves a truncated tensors file under the final name."""
    from safetensors.torch import save_file

    staging = staging or path.with_name(path.name + ".partial")
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(staging), metadata=metadata)
    staging.replace(path)


# ----------------------------------------------------------------------------- cache folders and keys


def key_digest(key: dict) -> str:
    """The sha256 of a key (JSON, sorted keys): names a cache folder and marks the stages made from it."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_artifact_dir(kind: str, model_id: str, digest: str) -> Path:
    """`<cache>/<kind>/<model name>_<first 12 hex of digest>`: where a discovery keeps its artifact."""
    name = slug(Path(model_id).name, limit=40)
    return cache_dir() / kind / f"{name}_{digest[:12]}"


# ----------------------------------------------------------------------------- stage cache


def _stage_paths(out: Path, name: str) -> tuple[Path, Path]:
    return out / "stages" / f"{name}.safetensors", out / "stages" / f"{name}.json"


def load_stage(out: Path, name: str, digest: str):
    """(tensors, info) of a finished stage made from the same inputs (`digest`), else None."""
    from safetensors.torch import load_file

    tensor_path, info_path = _stage_paths(out, name)
    if not info_path.is_file() or not tensor_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("key_sha256") != digest or info.get("tensors_sha256") != file_sha256(tensor_path):
        return None
    return load_file(str(tensor_path)), info


def save_stage(out: Path, name: str, digest: str, tensors: dict, info: dict) -> None:
    """Save a finished stage: `stages/<name>.safetensors`, then `stages/<name>.json` (its info, the key
    digest and the tensors' sha256), which marks it complete."""
    tensor_path, info_path = _stage_paths(out, name)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(tensor_path, tensors, staging=tensor_path.with_suffix(".partial"))
    write_json_atomic(info_path, {**info, "key_sha256": digest, "tensors_sha256": file_sha256(tensor_path)})


# ----------------------------------------------------------------------------- rows and progress


def complete_groups(rows, accepted) -> list[tuple[tuple[str, str], list[dict]]]:
    """((skeleton, valence), its six rows in EMOTIONS order) for groups with all six accepted."""
    members: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if accepted.get(row["id"]):
            members[(row["skeleton_id"], row["valence"])][row["target_emotion"]] = row
    return [
        (group, [by_emotion[e] for e in EMOTIONS])
        for group, by_emotion in members.items()
        if len(by_emotion) == len(EMOTIONS)
    ]


def progress_bar(total: int, desc: str, unit: str, enabled: bool, initial: int = 0):
    """A tqdm bar on stderr, or None when progress is off."""
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
