"""Step 1 of `sev-bench run`: what a run asks for (`RunRequest`), checked before any model or scorer loads,
and what it will make: the selected SEV rows and the run's identity (what `run.json` pins), which also
names the default output dir. Shards split the rows by skeleton (`in_shard`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .backends import check_backend
from .data import dataset_fingerprint, load_sev, select_rows
from .defaults import DEFAULT_SCORER
from .errors import UserError
from .hashing import slug
from .methods import MethodConfig, resolve_method
from .models import DTYPES, check_model_spec, resolve_device
from .prompts import CHAT_TEMPLATE_KWARGS, EMOTIONS, VALENCES
from .results import IDENTITY_ADDED_KEYS
from .scoring import SCORERS

SPLITS = ("train", "dev", "test")


@dataclass
class RunRequest:
    """What `sev-bench run` asks for: one field per command-line option."""

    method: str = "prompting"
    model: str = "smollm2-135m"
    split: str = "test"
    limit: int | None = None
    emotions: list[str] | None = None
    valences: list[str] | None = None
    batch_size: int = 16
    scorer: str = DEFAULT_SCORER
    output_dir: str | None = None
    seed: int = 1234  # the protocol's
    dtype: str = "auto"
    device: str = "auto"
    data_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    scorer_options: dict = field(default_factory=dict)  # load_scorer(options=...): --scorer-model, --judge-url, ...
    threads: int | None = None  # CPU threads for torch (default: torch's own choice)
    shard: tuple[int, int] | None = None  # (index, count): this process generates only its shard
    # the shard is this process's rank in a torchrun/accelerate launch (sev_bench.distributed): all ranks
    # meet at a barrier after generating, then rank 0 alone merges and writes the results
    distributed: bool = False
    backend: str = "hf"  # "hf" (hookable) or "vllm" (methods without interventions only)
    progress: bool = True


@dataclass
class RunPlan:
    """A checked request: the method, the rows it selects and the run's identity (what `run.json` pins)."""

    request: RunRequest
    method_config: MethodConfig
    rows: list[dict]
    identity: dict


def plan(request: RunRequest) -> RunPlan:
    """Every check that needs no model or scorer (so that a typo fails before anything loads), then the
    selected rows and the run's identity."""
    method_config: MethodConfig = resolve_method(request.method, request.overrides)
    emotions, valences = _check_request(request)
    check_backend(request.backend, method_config.method)
    SCORERS.get(request.scorer)  # an unknown scorer fails here, before any data or model loads
    _check_model_settings(request)
    rows = select_rows(load_sev(request.data_dir)[request.split], emotions, valences, request.limit)
    if not rows:
        raise UserError("the selection (--split/--emotions/--valences/--limit) has no rows")
    identity = {
        "method": {k: v for k, v in method_config.as_dict().items() if k != "source"},
        "model": request.model,
        "dtype": request.dtype,
        "split": request.split,
        "selection": {"emotions": emotions, "valences": valences, "limit": request.limit},
        "dataset_sha256": dataset_fingerprint(request.data_dir),
        "scorer": {"id": request.scorer},  # and its sha256 once it has loaded
        "seed": request.seed,
        # hf runs keep their identity (and run dirs) of before the vllm backend existed
        **({"backend": request.backend} if request.backend != "hf" else {}),
        # the fixed chat-template inputs (no date of the day); a run dir started before they were recorded
        # resumes without them (RunDir.start), unless its template reads them (`_check_legacy_template`)
        "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
    }
    return RunPlan(request, method_config, rows, identity)


def _check_request(request: RunRequest) -> tuple[list[str], list[str]]:
    """The request's plain settings; returns the emotions and valences it selects."""
    if request.split not in SPLITS:
        raise UserError(f"unknown split {request.split!r}; expected one of {', '.join(SPLITS)}")
    emotions = _check_names(request.emotions, EMOTIONS, "emotion")
    valences = _check_names(request.valences, VALENCES, "valence")
    if request.limit is not None and request.limit < 1:
        raise UserError("--limit must be >= 1")
    if request.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if request.threads is not None and request.threads < 1:
        raise UserError("--threads must be >= 1")
    return emotions, valences


def _check_names(given: list[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if not given:
        return list(allowed)
    for name in given:
        if name not in allowed:
            raise UserError(f"unknown {what} {name!r}; expected one of {', '.join(allowed)}")
    return [name for name in allowed if name in given]


def _check_model_settings(request: RunRequest) -> None:
    """What can be checked of --model, --dtype and --device without loading anything big."""
    if request.dtype not in DTYPES:
        raise UserError(f"--dtype {request.dtype!r}: expected one of {', '.join(DTYPES)}")
    if request.backend == "hf":  # vLLM picks its own device (its Generator.load checks --device against it)
        resolve_device(request.device)
    check_model_spec(request.model)


def in_shard(row: dict, shard: tuple[int, int] | None) -> bool:
    """Shards split by skeleton (a stable hash of its id), so rows that share a chat stay together."""
    if shard is None:
        return True
    index, count = shard
    return int(hashlib.sha256(row["skeleton_id"].encode()).hexdigest(), 16) % count == index


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return int(index), int(count)


def default_output_dir(identity: dict) -> Path:
    # Keys added to the identity later are left out of the digest, so a command rerun without --output-dir
    # still finds (and resumes) the default dir of a run started before they existed.
    hashed = {k: v for k, v in identity.items() if k not in IDENTITY_ADDED_KEYS}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{identity['method']['name']}_{slug(Path(identity['model']).name, limit=40)}_{identity['split']}_{digest}"
    return Path("sev-bench-runs") / name
