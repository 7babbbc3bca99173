"""Context-agnostic emotion directions (docs/protocol.md, steps 1-2), on the train split.

1. Elicit: the prompting chat ("Always reply in {emotion}. ...") for every train row. With
   `accept="scorer"` the model generates a reply and a row counts only if the scorer names its target
   emotion (the paper filters with its judge); with `accept="all"` every row counts and nothing is
   generated (the activations read below depend on the prompt alone).
2. Read, at the last prompt token of every counted row, the residual after each layer's attention
   sublayer (`h_in + attn_out`, position "attn") and after the layer (position "mlp").
3. For each (skeleton, valence) group with all six emotions counted: centre the six states on their
   mean; average the centred states over groups (centroids); remove the centroids' mean; L2-normalise.
   Per layer and position this gives one unit direction per emotion.

The artifact is a folder: `directions.safetensors` (`attn`, `mlp`: [6 emotions, layers, hidden], plus
`attn.<valence>` / `mlp.<valence>` from each valence's groups alone), `metadata.json` (model, scorer,
dataset, groups, config; written last, so its presence marks a complete artifact), `report.md` + PNGs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__, prompts
from ..atomic import write_json_atomic
from ..backends.hf import GenerationConfig, HFGenerator, render_prompt
from ..data import dataset_fingerprint, load_sev, select_rows
from ..defaults import DEFAULT_SCORER
from ..errors import UserError
from ..hashing import file_sha256
from ..interventions import Capture, HookSession
from ..prompts import EMOTIONS, VALENCES
from .artifacts import (
    ACCEPT_MODES,
    MIN_GROUPS,
    cached_artifact_dir,
    check_model,  # noqa: F401  (re-exported: methods/steering.py imports it from here)
    complete_groups,
    key_digest,
    model_signature,
    progress_bar,
    read_artifact,
    seal,
    write_tensors,
)
from .context import command_context
from .directions_report import write_directions_report

ARTIFACT_FORMAT = "sev-bench-directions/1"
POSITIONS = ("attn", "mlp")


@dataclass(frozen=True)
class DirectionConfig:
    accept: str = "all"  # "scorer": only replies the scorer accepts count; "all": every row counts
    limit: int | None = None  # the first N train rows (themes interleaved); None = all 2,304
    system_template: str = prompts.PROMPTING_SYSTEM_TEMPLATE
    max_new_tokens: int = 100  # elicitation replies (accept="scorer" only)

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_MODES:
            raise UserError(f"accept={self.accept!r}: expected one of {', '.join(ACCEPT_MODES)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("the discovery limit must be >= 1 (or absent for the whole train split)")


# ----------------------------------------------------------------------------- the formula


def emotion_directions(states):
    """Unit directions [6, ...] from last-token states [groups, 6 emotions, ...] (protocol step 2)."""
    delta = states - states.mean(dim=1, keepdim=True)  # within-group centring
    centroids = delta.mean(dim=0)  # [6, ...]
    centred = centroids - centroids.mean(dim=0, keepdim=True)  # global-mean removal (a no-op: see protocol)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------- the artifact


@dataclass
class Directions:
    path: Path
    tensors: dict  # name -> tensor [6, layers, hidden]
    metadata: dict

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]

    @property
    def num_layers(self) -> int:
        return self.tensors["mlp"].shape[1]

    def vector(self, position: str, emotion: str, layer: int):
        return self.tensors[position][EMOTIONS.index(emotion), layer]


def load_directions(path: str | Path) -> Directions:
    tensors, metadata = read_artifact(
        path, ARTIFACT_FORMAT, "directions.safetensors", "sev-bench discover directions"
    )
    return Directions(Path(path), tensors, metadata)


def artifact_key(loaded, dataset_sha256: str, scorer_sha256: str | None, config: DirectionConfig, dtype: str) -> dict:
    """Everything the directions depend on (hashed into the default cache folder name)."""
    return {
        "format": ARTIFACT_FORMAT,
        "model": model_signature(loaded),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "dtype_requested": dtype,
        "dataset_sha256": dataset_sha256,
        "scorer_sha256": scorer_sha256 if config.accept == "scorer" else None,
        "config": asdict(config),
    }


def default_artifact_dir(key: dict) -> Path:
    """The cache folder of the directions made from `key`."""
    return cached_artifact_dir("directions", key["model"]["id"], key_digest(key))


# ----------------------------------------------------------------------------- discovery


def discover_directions(
    loaded,
    *,
    config: DirectionConfig,
    dataset_sha256: str,
    train_rows: list[dict],
    scorer=None,
    output_dir: str | Path | None = None,
    dtype: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    log=print,
) -> tuple[Directions, bool]:
    """Directions for `loaded`: reused when `output_dir` (default: the cache folder for these inputs)
    already holds them for the same inputs, else computed there. Returns (directions, reused)."""
    if config.accept == "scorer" and scorer is None:
        raise ValueError("accept='scorer' needs a scorer")
    key = artifact_key(loaded, dataset_sha256, scorer.sha256 if scorer is not None else None, config, dtype)
    out = Path(output_dir) if output_dir else default_artifact_dir(key)
    existing = _reusable_directions(out, key, explicit=bool(output_dir), log=log)
    if existing is not None:
        return existing, True
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    rows = train_rows[: config.limit] if config.limit else list(train_rows)
    started = time.perf_counter()
    if config.accept == "scorer":
        accepted = _elicit_and_accept(loaded, rows, config, scorer, out, batch_size, progress)
    else:
        accepted = {row["id"]: True for row in rows}
    timings["elicitation_s"] = time.perf_counter() - started

    groups = _enough_groups(rows, accepted, config, log)
    started = time.perf_counter()
    ordered_rows = [row for _, members in groups for row in members]  # group-major, emotions in EMOTIONS order
    states = read_last_token_states(loaded, ordered_rows, config.system_template, batch_size, progress)
    timings["activations_s"] = time.perf_counter() - started

    tensors = direction_tensors(states, groups)
    tensor_path = out / "directions.safetensors"
    write_tensors(tensor_path, tensors, metadata={"format": ARTIFACT_FORMAT})
    metadata = {
        "format": ARTIFACT_FORMAT,
        "key": key,
        "model": key["model"],
        "dataset_sha256": dataset_sha256,
        "scorer": scorer.info() if scorer is not None else None,
        "config": asdict(config),
        **_row_counts(rows, accepted, groups),
        "tensors_sha256": file_sha256(tensor_path),
        "sev_bench_version": __version__,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    directions = Directions(out, tensors, metadata)
    write_directions_report(directions, states, out)
    write_json_atomic(out / "metadata.json", seal(metadata))  # last: marks the artifact complete
    return directions, False


def _reusable_directions(out: Path, key: dict, explicit: bool, log) -> Directions | None:
    """The directions in `out` when they were made from `key`, else None. In an `explicit` output dir a
    damaged artifact or one made from other inputs is refused (the cache's own is rediscovered)."""
    existing = None
    if (out / "metadata.json").is_file():
        try:
            existing = load_directions(out)
        except UserError as exc:
            if explicit:
                raise
            log(f"{exc}; discovering them again")  # a damaged or outdated artifact in the cache
    if existing is None:
        return None
    if existing.metadata.get("key") == key:
        log(f"reusing the emotion directions in {out} (same model, data, scorer and settings)")
        return existing
    if explicit:
        raise UserError(f"{out} holds directions made from other inputs; choose another --output-dir")
    return None


def _groups_by_valence(groups) -> dict[str, int]:
    return {v: sum(1 for g in groups if g[0][1] == v) for v in VALENCES}


def _enough_groups(rows, accepted, config: DirectionConfig, log) -> list:
    """The complete groups (logged), or a UserError when there are fewer than MIN_GROUPS."""
    groups = complete_groups(rows, accepted)
    per_valence = _groups_by_valence(groups)
    if len(groups) < MIN_GROUPS:
        raise UserError(
            f"only {len(groups)} (skeleton, valence) groups have all six emotions accepted "
            f"(accept={config.accept}, {len(rows)} train rows); at least {MIN_GROUPS} are needed. "
            "Use more rows (drop --limit) or accept=all for a model that rarely follows emotion prompts"
        )
    log(
        f"{len(groups)} complete groups ({', '.join(f'{v} {n}' for v, n in per_valence.items())}); "
        f"reading last-token states of {6 * len(groups)} prompts"
    )
    return groups


def direction_tensors(states: dict, groups: list) -> dict:
    """The artifact's tensors from the group-major states: per position the directions of all groups and,
    as `<position>.<valence>`, of each valence's groups alone."""
    import torch

    tensors = {}
    for position in POSITIONS:
        grouped = states[position].reshape(len(groups), len(EMOTIONS), *states[position].shape[1:])
        tensors[position] = emotion_directions(grouped)
        for valence in VALENCES:
            mask = torch.tensor([g[0][1] == valence for g in groups])
            if int(mask.sum()) > 0:
                tensors[f"{position}.{valence}"] = emotion_directions(grouped[mask])
    return {name: t.contiguous() for name, t in tensors.items()}


def _row_counts(rows, accepted, groups) -> dict:
    """The metadata fields that count rows and groups (and name the two positions)."""
    return {
        "emotions": list(EMOTIONS),
        "positions": {"attn": "h_in + attn_out (after the attention sublayer)", "mlp": "decoder layer output"},
        "train_rows": len(rows),
        "accepted_rows": sum(bool(v) for v in accepted.values()),
        "accepted_by_emotion": {
            e: sum(bool(accepted.get(r["id"])) for r in rows if r["target_emotion"] == e) for e in EMOTIONS
        },
        "groups": len(groups),
        "groups_per_emotion": {e: len(groups) for e in EMOTIONS},  # complete groups: each has all six
        "groups_by_valence": _groups_by_valence(groups),
        "min_groups": MIN_GROUPS,
    }


def _elicit_and_accept(loaded, rows, config, scorer, out: Path, batch_size: int, progress: bool) -> dict[str, bool]:
    """Prompt-elicited replies, scored; appended to `elicitation.jsonl` per batch so a killed discovery
    resumes. Returns row id -> accepted."""
    path = out / "elicitation.jsonl"
    done: dict[str, bool] = {}
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a kill: that row is redone
                done[record["id"]] = record["accepted"]
    todo = [row for row in rows if row["id"] not in done]
    if todo:
        conversations = [_chat(row, config.system_template) for row in todo]
        generator = HFGenerator(loaded, batch_size, GenerationConfig(max_new_tokens=config.max_new_tokens))
        bar = progress_bar(len(rows), "eliciting", "row", progress, initial=len(done))

        def save(indices, replies):
            batch = [todo[i] for i in indices]
            scores = scorer.score(replies, [row["target_emotion"] for row in batch])
            with open(path, "a", encoding="utf-8") as handle:
                for row, reply, score in zip(batch, replies, scores):
                    done[row["id"]] = bool(score["correct"])
                    record = {"id": row["id"], "completion": reply, "accepted": done[row["id"]]}
                    handle.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.update(len(batch))

        try:
            generator.generate(conversations, on_batch=save)
        finally:
            if bar is not None:
                bar.close()
    return done


def _chat(row: dict, system_template: str) -> list[dict]:
    return prompts.chat(system_template.format(emotion=row["target_emotion"]), row["scenario"], row["event"])


def read_last_token_states(loaded, rows, system_template: str, batch_size: int, progress: bool) -> dict:
    """{"attn": [rows, layers, hidden], "mlp": [rows, layers, hidden]} float32 states at each row's
    last prompt token, from batched forward passes (prompts sorted by length to limit padding)."""
    import torch


    tokenizer = loaded.tokenizer
    texts = [render_prompt(tokenizer, _chat(row, system_template)) for row in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    layers = range(loaded.num_layers)
    captures = [Capture(site, layer) for layer in layers for site in ("resid_mid", "resid_post")]
    hidden = loaded.model.config.hidden_size
    result = {p: torch.empty(len(rows), loaded.num_layers, hidden) for p in POSITIONS}
    encoder = HFGenerator(loaded, batch_size)
    bar = progress_bar(len(rows), "reading states", "row", progress)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        encoded = encoder.encode([texts[i] for i in indices])
        with HookSession(loaded, captures=captures) as session, torch.inference_mode():
            loaded.model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask, logits_to_keep=1)
        for layer in layers:
            result["attn"][indices, layer] = session.captured[("resid_mid", layer)][0]
            result["mlp"][indices, layer] = session.captured[("resid_post", layer)][0]
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    return result


def obtain_directions(context, accept: str, limit: int | None, output_dir=None) -> tuple[Directions, bool]:
    """The cached directions for this model and these inputs, discovered first when there are none.
    Returns (directions, reused)."""
    config = DirectionConfig(accept=accept, limit=limit)
    fingerprint = dataset_fingerprint(context.data_dir)
    scorer = context.scorer if accept == "scorer" else None
    if output_dir is None:
        scorer_sha256 = scorer.sha256 if scorer is not None else None
        target = default_artifact_dir(artifact_key(context.loaded, fingerprint, scorer_sha256, config, context.dtype))
        if not (target / "metadata.json").is_file():
            context.log(
                f"no emotion directions cached for {context.loaded.model_id} with these settings; discovering "
                f"them first (the same as `sev-bench discover directions --accept {accept}"
                + (f" --limit {limit}" if limit else "")
                + "`)"
            )
    train = select_rows(load_sev(context.data_dir)["train"], list(EMOTIONS), list(VALENCES), None)
    return discover_directions(
        context.loaded,
        config=config,
        dataset_sha256=fingerprint,
        train_rows=train,
        scorer=scorer,
        output_dir=output_dir,
        dtype=context.dtype,
        batch_size=context.batch_size,
        progress=context.progress,
        log=context.log,
    )


def discover_for_model(
    model: str,
    *,
    accept: str = "all",
    limit: int | None = None,
    output_dir: str | None = None,
    scorer_name: str = DEFAULT_SCORER,
    scorer_options: dict | None = None,
    data_dir: str | None = None,
    batch_size: int = 16,
    dtype: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Directions, bool]:
    """`sev-bench discover directions`: load the model (and the scorer for accept="scorer"), then
    reuse or compute the directions. Returns (directions, reused)."""
    if limit is not None and limit < 1:
        raise UserError("--limit must be >= 1")
    context = command_context(
        model,
        accept=accept,
        scorer_name=scorer_name,
        scorer_options=scorer_options,
        data_dir=data_dir,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        threads=threads,
        progress=progress,
    )
    return obtain_directions(context, accept, limit, output_dir=output_dir)
