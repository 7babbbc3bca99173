"""`sev-bench run`: select SEV rows, generate with a method, score, and write a resumable run dir."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .data import PINNED_COMMIT, SOURCE_REPOSITORY, dataset_fingerprint, load_sev, select_rows
from .defaults import DEFAULT_SCORER
from .errors import UserError
from .fluency import aggregate_fluency, fluency_records, has_gate_perplexity, measure_samples, regate_samples
from .fluency_calibration import gate_for
from .hashing import slug
from .methods import MethodConfig, resolve_method
from .methods.base import PrepareContext
from .metrics import empty_replies, fluent_accuracy, grouped_accuracy, predicted_share
from .prompts import CHAT_TEMPLATE_KWARGS, EMOTIONS, VALENCES
from .results import IDENTITY_ADDED_KEYS, SCHEMA_VERSION, RunDir, load_results, summary_markdown

SPLITS = ("train", "dev", "test")


@dataclass
class RunRequest:
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


def _check_names(given: list[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if not given:
        return list(allowed)
    for name in given:
        if name not in allowed:
            raise UserError(f"unknown {what} {name!r}; expected one of {', '.join(allowed)}")
    return [name for name in allowed if name in given]


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


def _git_state() -> dict:
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version(), "sev-bench": __version__}
    for package in (
        "torch",
        "transformers",
        "datasets",
        "tokenizers",
        "scikit-learn",
        "sentence-transformers",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _hardware(device) -> dict:
    import torch

    info = {"device": str(device), "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = _cpu_model()
        info["cpu_cores"] = os.cpu_count()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Progress:
    """A tqdm bar over replies (stderr), or nothing."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="reply", desc="generating", file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(request: RunRequest) -> tuple[dict, Path]:
    """Run (or resume) one benchmark run; returns (results, output dir)."""
    started = time.perf_counter()
    # Cheap checks first, so that a typo fails before any model or scorer loads.
    method_config: MethodConfig = resolve_method(request.method, request.overrides)
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
    from .backends import check_backend

    check_backend(request.backend, method_config.method)
    from .scoring import SCORERS, load_scorer

    SCORERS.get(request.scorer)  # an unknown scorer fails here, before any data or model loads
    _check_model_settings(request)

    dataset = load_sev(request.data_dir)[request.split]
    rows = select_rows(dataset, emotions, valences, request.limit)
    if not rows:
        raise UserError("the selection (--split/--emotions/--valences/--limit) has no rows")
    fingerprint = dataset_fingerprint(request.data_dir)
    identity = {
        "method": {k: v for k, v in method_config.as_dict().items() if k != "source"},
        "model": request.model,
        "dtype": request.dtype,
        "split": request.split,
        "selection": {"emotions": emotions, "valences": valences, "limit": request.limit},
        "dataset_sha256": fingerprint,
        "scorer": {"id": request.scorer},  # and its sha256 once it has loaded
        "seed": request.seed,
        # hf runs keep their identity (and run dirs) of before the vllm backend existed
        **({"backend": request.backend} if request.backend != "hf" else {}),
        # the fixed chat-template inputs (no date of the day); a run dir started before they were recorded
        # resumes without them (RunDir.start), unless its template reads them (checked below)
        "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
    }

    run_dir = None
    try:
        if request.output_dir:  # a dir in use, or holding another run, is refused before the scorer loads
            run_dir = RunDir(request.output_dir)
            run_dir.lock(request.shard)
            run_dir.check_identity(identity, scorer_loaded=False)
        scorer = load_scorer(request.scorer, data_dir=request.data_dir, options=request.scorer_options)
        identity["scorer"] = {"id": scorer.id, "sha256": scorer.sha256}
        if run_dir is None:  # the default dir is named after the whole identity
            run_dir = RunDir(default_output_dir(identity))
            run_dir.lock(request.shard)
        run_dir.check_identity(identity)
        return _run_in(run_dir, request, method_config, rows, identity, scorer, started)
    finally:
        if run_dir is not None:
            run_dir.release()


def _check_model_settings(request: RunRequest) -> None:
    """What can be checked of --model, --dtype and --device without loading anything big."""
    from .models import DTYPES, check_model_spec, resolve_device

    if request.dtype not in DTYPES:
        raise UserError(f"--dtype {request.dtype!r}: expected one of {', '.join(DTYPES)}")
    if request.backend == "hf":  # vLLM picks its own device (make_generator checks --device against it)
        resolve_device(request.device)
    check_model_spec(request.model)


def _run_in(
    run_dir: RunDir, request: RunRequest, method_config: MethodConfig, rows: list[dict], identity: dict, scorer, started
) -> tuple[dict | None, Path]:
    """`run` once the dir is locked for this process and known to hold this run (or nothing)."""
    from .backends import backend_info, make_generator

    own_file = run_dir.shard_path(request.shard)
    done = run_dir.completed(own=own_file)
    todo = [row for row in rows if row["id"] not in done and in_shard(row, request.shard)]
    previous = load_results(run_dir.path) if not todo and run_dir.results_path.exists() else None
    if previous is not None and "fluency" in previous["metrics"]:
        if request.shard is not None:  # alone, it removes the lock files on leaving (see RunDir.release)
            run_dir.lock_alone()
        print(f"{run_dir.path} is already complete; nothing to do", file=sys.stderr)
        return previous, run_dir.path

    timings = {"model_load_s": 0.0, "generation_s": 0.0, "scoring_s": 0.0}
    _seed_everything(request.seed)
    if request.threads is not None:
        import torch

        torch.set_num_threads(request.threads)
    load_start = time.perf_counter()
    generator = make_generator(
        request.backend,
        request.model,
        dtype=request.dtype,
        device=request.device,
        batch_size=request.batch_size,
        config=method_config.generation,
        seed=request.seed,
        threads=request.threads,
    )
    loaded = generator.loaded
    timings["model_load_s"] = time.perf_counter() - load_start
    _check_legacy_template(run_dir, loaded.tokenizer, bool(done) and bool(todo))
    thresholds, gate_info = gate_for({"id": loaded.model_id, "revision": loaded.revision})
    artifact = None
    if todo or (method_config.method.kind != "prompt" and previous is None):  # its sha256 goes in the results
        prepare_start = time.perf_counter()
        context = PrepareContext(
            loaded, scorer, request.data_dir, request.dtype, request.batch_size, request.progress, log=_log
        )
        artifact = method_config.method.prepare(context)
        timings["prepare_s"] = time.perf_counter() - prepare_start
    # Only now, with every check passed and the model loaded, does the dir become this run's.
    run_dir.claim(identity)
    if todo:
        _generate_and_score(
            generator,
            method_config,
            artifact,
            scorer,
            todo,
            run_dir,
            own_file,
            timings,
            request.progress,
            len(done),
            len(rows),
            thresholds,
        )

    if request.distributed:
        from .distributed import wait_for_all_ranks

        wait_for_all_ranks()
        if request.shard[0] != 0:
            _log(f"rank {request.shard[0]}/{request.shard[1]} done; rank 0 merges the shards into results.json")
            return None, run_dir.path

    done = run_dir.completed(own=own_file)
    samples = [done[row["id"]] for row in rows if row["id"] in done]
    if len(samples) != len(rows):
        if request.shard is not None and not request.distributed:  # other shards are still at work: the last
            # one to end finishes
            print(
                f"shard {request.shard[0]}/{request.shard[1]} done; {len(rows) - len(samples)} replies are "
                "left to other shards (the last shard to end writes results.json)",
                file=sys.stderr,
            )
            return None, run_dir.path
        raise UserError(
            f"{run_dir.path} lacks {len(rows) - len(samples)} replies (unscored or not generated); rerun to finish"
        )
    if request.shard is not None:  # merging needs the dir alone: wait until the other shards let go of it
        run_dir.lock_alone()
        if previous is None and run_dir.results_path.exists():  # another shard merged meanwhile
            return load_results(run_dir.path), run_dir.path
        done = run_dir.completed(own=own_file)  # read again, now that no shard writes any more
        samples = [done[row["id"]] for row in rows]
    # Samples of a run made before the fluency guard existed, or before its perplexity was measured under
    # the neutral chat: measure it now. Every verdict is then redrawn under this model's gate.
    missing_fluency = [s for s in samples if not has_gate_perplexity(s.get("fluency"))]
    if missing_fluency:
        backfill_start = time.perf_counter()
        measure_samples(loaded, {row["id"]: row for row in rows}, missing_fluency, thresholds)
        timings["fluency_backfill_s"] = time.perf_counter() - backfill_start
    regated = regate_samples(samples, thresholds)
    fluency_metrics = {
        "fluency": aggregate_fluency(samples, thresholds),
        "accuracy_fluent": fluent_accuracy(samples),
    }
    if previous is not None:  # only the fluency metrics were missing: keep how the replies were made
        previous["metrics"].update(fluency_metrics)
        previous["spec"]["fluency"] = gate_info
        previous["fluency_backfill"] = {"git": _git_state(), "timings": timings}
        run_dir.finish(samples, previous, summary_markdown(previous), rewrite_samples=True)
        return previous, run_dir.path
    timings["total_s"] = time.perf_counter() - started

    results = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": {
            "method": {
                **method_config.as_dict(),
                "config_hash": method_config.config_hash,
                "artifact": _artifact_info(artifact),
            },
            "model": _model_info(loaded, request.dtype),
            "backend": backend_info(generator),
            "generation": {
                **method_config.generation.as_dict(),
                "policy": method_config.decoding_policy,
                **_template_info(generator),
            },
            "dataset": {
                "name": "SEV",
                "source": SOURCE_REPOSITORY,
                "commit": PINNED_COMMIT,
                "split": request.split,
                "sha256": identity["dataset_sha256"],
                "selection": identity["selection"],
                "n": len(rows),
            },
            "scorer": scorer.info(),
            "fluency": gate_info,
            "seed": request.seed,
            "hardware": _hardware(generator.device),
            "software": _versions(),
            "git": _git_state(),
            "command": sys.argv[1:] if Path(sys.argv[0]).name in ("sev-bench", "__main__.py") else None,
        },
        "metrics": {
            "accuracy": grouped_accuracy(samples),
            "predicted_share": predicted_share(samples),
            "empty_replies": empty_replies(samples),
            **fluency_metrics,
        },
        "timings": {**timings, "samples_reused": len(rows) - len(todo)},
        "samples_file": run_dir.samples_path.name,
    }
    run_dir.finish(samples, results, summary_markdown(results), rewrite_samples=bool(missing_fluency) or regated)
    return results, run_dir.path


def _model_info(loaded, dtype_requested: str) -> dict:
    model = loaded.model
    return {
        "id": loaded.model_id,
        "revision": loaded.revision,
        "source": loaded.source,
        "architecture": model.config.model_type,
        "num_parameters": model.num_parameters(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "dtype_requested": dtype_requested,
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _artifact_info(artifact) -> dict | None:
    """The artifact's sha256 and where it lies; a path inside the cache is written relative to
    `$SEV_BENCH_CACHE`, so result files do not carry one machine's paths. An artifact with a
    `results_info()` adds what it says about itself (a circuit: the head space, the budget rule and the
    shares of heads and neurons it selects)."""
    if artifact is None:
        return None
    from .paths import shown_path

    info = {"path": shown_path(artifact.path), "sha256": artifact.sha256}
    describe = getattr(artifact, "results_info", None)
    if callable(describe):
        info.update(describe())
    return info


def _template_info(generator) -> dict:
    template = generator.loaded.tokenizer.chat_template or ""
    return {
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
    }


def _template_reads(template, names) -> list[str]:
    """The names among `names` that a chat template (a string, or a dict of named templates) mentions."""
    text = json.dumps(template) if isinstance(template, dict) else str(template or "")
    return [name for name in names if name in text]


def _check_legacy_template(run_dir: RunDir, tokenizer, resuming: bool) -> None:
    """A run dir started before the chat-template inputs were fixed resumes only when its template does not
    read them: otherwise its earlier prompts carried the date of the day they ran, and new ones would not."""
    if not resuming or "chat_template_kwargs" not in run_dir.legacy_keys:
        return
    read = _template_reads(getattr(tokenizer, "chat_template", None), CHAT_TEMPLATE_KWARGS)
    if read:
        raise UserError(
            f"--output-dir {run_dir.path} was started before sev-bench fixed the chat template's {read[0]}, which "
            "this model's template reads (its earlier prompts carry the day they ran); use a new --output-dir"
        )


def _generate_and_score(
    generator, method_config, artifact, scorer, todo, run_dir, own_file, timings, progress, n_done, n_total, thresholds
):
    """Generate replies for `todo` rows, score each batch and append it to samples.jsonl at once.

    Rows of a prompt-only method whose chat is identical (`none` sends one chat for all six targets)
    share one generation: greedy decoding without interventions gives the same reply anyway. A method
    with interventions generates one target emotion at a time (its hooks are the same for a whole batch)."""
    method = method_config.method
    conversations: list[list[dict]] = []
    rows_of_conversation: list[list[dict]] = []
    index_of_chat: dict[str, int] = {}
    for row in todo:
        messages = method.messages(row, row["target_emotion"])
        key = json.dumps(messages) if method.kind == "prompt" else row["id"]
        if key not in index_of_chat:
            index_of_chat[key] = len(conversations)
            conversations.append(messages)
            rows_of_conversation.append([])
        rows_of_conversation[index_of_chat[key]].append(row)
    if method.kind == "prompt":
        jobs = [(list(range(len(conversations))), [])]
    else:
        by_target: dict[str, list[int]] = {}
        for index, rows_here in enumerate(rows_of_conversation):
            by_target.setdefault(rows_here[0]["target_emotion"], []).append(index)
        jobs = [(indices, method.interventions(artifact, target)) for target, indices in by_target.items()]

    bar = _Progress(n_total, n_done, progress)

    def save_batch(indices: list[int], replies: list[str]) -> None:
        score_start = time.perf_counter()
        batch_rows, texts = [], []
        for index, reply in zip(indices, replies):
            for row in rows_of_conversation[index]:
                batch_rows.append((row, conversations[index]))
                texts.append(reply)
        scores = scorer.score(texts, [row["target_emotion"] for row, _ in batch_rows])
        # Fluency under the unmodified model (the hooks are gone between batches), once per generation.
        gate_rows = [rows_of_conversation[i][0] for i in indices]
        fluency_of = dict(zip(indices, fluency_records(generator.loaded, gate_rows, replies, thresholds)))
        fluency = [fluency_of[index] for index in indices for _ in rows_of_conversation[index]]
        records = [
            {
                "id": row["id"],
                "skeleton_id": row["skeleton_id"],
                "theme": row["theme"],
                "valence": row["valence"],
                "target_emotion": row["target_emotion"],
                "messages": messages,
                "completion": text,
                **score,
                "fluency": record_fluency,
            }
            for (row, messages), text, score, record_fluency in zip(batch_rows, texts, scores, fluency)
        ]
        # A reply the scorer could not score (a judge that kept failing) is not saved: it is neither a hit
        # nor a miss, and a rerun generates and scores it again.
        run_dir.append([record for record in records if record["correct"] is not None], own_file)
        timings["scoring_s"] += time.perf_counter() - score_start
        bar.update(len(records))

    generation_start = time.perf_counter()
    try:
        for indices, interventions in jobs:
            generator.generate(
                [conversations[i] for i in indices],
                on_batch=lambda local, replies, indices=indices: save_batch([indices[i] for i in local], replies),
                interventions=interventions,
            )
    finally:
        bar.close()
    scorer.check_failures()  # too many unscorable replies fail the run (one line), whatever is saved
    timings["generation_s"] = time.perf_counter() - generation_start - timings["scoring_s"]
