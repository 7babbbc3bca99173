"""`sev-bench run`: select SEV rows, generate with a method, score, and write a resumable run dir.

A run is a sequence of named steps (`run` reads as it):

1. `plan` (`sev_bench.run_plan`): check the request (before anything big loads), select the rows, build
   the run's identity;
2. `opened_run_dir`: lock the output dir and load the scorer (the default dir is named after the identity,
   the scorer's sha256 included); `survey` then says what the dir already holds;
3. `load`: seed, load the model on its backend and the fluency gate for it;
4. `prepare`: the method's artifact (directions, a circuit), discovered first when none is cached;
5. `generate_and_score`: the missing replies, scored and appended to the samples file batch by batch;
6. `collect`: every row's sample, once the other shards or ranks are done;
7. `measure_fluency`: perplexity for samples made before it was measured, verdicts redrawn under the gate;
8. `build_results` and `finalize`: the metrics, then `results.json` (`RunResults`) and the summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from . import provenance
from .backends import Generator, backend_info, make_generator
from .data import PINNED_COMMIT, SOURCE_REPOSITORY
from .distributed import wait_for_all_ranks
from .errors import UserError
from .fluency import (
    FluencyThresholds,
    aggregate_fluency,
    fluency_records,
    has_gate_perplexity,
    measure_samples,
    regate_samples,
)
from .fluency_calibration import gate_for
from .methods.base import PrepareContext
from .metrics import empty_replies, fluent_accuracy, grouped_accuracy, predicted_share
from .prompts import CHAT_TEMPLATE_KWARGS
from .records import RunResults, SampleRecord, Score
from .results import RunDir, load_results, summary_markdown
from .run_plan import RunPlan, RunRequest, default_output_dir, in_shard, parse_shard, plan, select_rows
from .scoring import load_scorer

# Imported from here by the CLI, tuning, tests and the lm-eval task: the request, its shard helpers, and
# (kept at its old address) the row selection.
__all__ = ["RunRequest", "default_output_dir", "in_shard", "parse_shard", "run", "select_rows"]


@dataclass
class RunState:
    """What the run dir holds for this process: the file it appends to, the rows still to make, and the
    results of a finished run (one that only lacks the fluency metrics is finished again)."""

    own_file: Path
    n_done: int
    todo: list[dict]
    previous: dict | None

    @property
    def complete(self) -> bool:
        return self.previous is not None and "fluency" in self.previous["metrics"]


@dataclass
class Engine:
    """The loaded generator and the fluency gate (thresholds and their record) for its model."""

    generator: Generator
    thresholds: FluencyThresholds
    gate_info: dict


@dataclass
class Collected:
    """Every row's sample when this process writes results.json; else the results another shard wrote
    meanwhile, or nothing (other shards or rank 0 finish the run)."""

    samples: list[dict] | None = None
    results: dict | None = None


def run(request: RunRequest) -> tuple[dict | None, Path]:
    """Run (or resume) one benchmark run; returns (results, output dir). Results are None for a shard or
    rank that leaves the merging to another process."""
    started = time.perf_counter()
    planned = plan(request)
    with opened_run_dir(planned) as (run_dir, scorer):
        state = survey(run_dir, planned)
        if state.complete:
            return _already_complete(run_dir, planned, state), run_dir.path
        timings = {"model_load_s": 0.0, "generation_s": 0.0, "scoring_s": 0.0}
        engine = load(planned, run_dir, state, timings)
        artifact = prepare(planned, engine, scorer, state, timings)
        run_dir.claim(planned.identity)  # only now, every check passed and the model loaded, is the dir this run's
        if state.todo:
            generate_and_score(planned, engine, scorer, artifact, run_dir, state, timings)
        collected = collect(planned, run_dir, state)
        if collected.samples is None:
            return collected.results, run_dir.path
        measured = measure_fluency(planned, engine, collected.samples, timings)
        results = build_results(planned, engine, scorer, artifact, state, collected.samples, timings, started)
        # a finished run that gains its fluency metrics always gets its samples rewritten with their records
        rewrite_samples = measured or state.previous is not None
        return finalize(run_dir, collected.samples, results, rewrite_samples), run_dir.path


# -- 2. the run dir and the scorer -----------------------------------------------------------------


@contextmanager
def opened_run_dir(planned: RunPlan) -> Iterator[tuple[RunDir, object]]:
    """(the run dir, locked for this process and known to hold this run or nothing; the loaded scorer).
    The dir is let go of on leaving."""
    request, identity = planned.request, planned.identity
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
        yield run_dir, scorer
    finally:
        if run_dir is not None:
            run_dir.release()


def survey(run_dir: RunDir, planned: RunPlan) -> RunState:
    """What is left to do in the dir for this process (its shard's rows not yet sampled)."""
    shard = planned.request.shard
    own_file = run_dir.shard_path(shard)
    done = run_dir.completed(own=own_file)
    todo = [row for row in planned.rows if row["id"] not in done and in_shard(row, shard)]
    previous = load_results(run_dir.path) if not todo and run_dir.results_path.exists() else None
    return RunState(own_file, len(done), todo, previous)


def _already_complete(run_dir: RunDir, planned: RunPlan, state: RunState) -> dict:
    if planned.request.shard is not None:  # alone, it removes the lock files on leaving (see RunDir.release)
        run_dir.lock_alone()
    print(f"{run_dir.path} is already complete; nothing to do", file=sys.stderr)
    return state.previous


# -- 3. load ---------------------------------------------------------------------------------------


def load(planned: RunPlan, run_dir: RunDir, state: RunState, timings: dict) -> Engine:
    """Seed, load the model on the request's backend, and the fluency gate of that model."""
    request = planned.request
    _seed_everything(request.seed)
    if request.threads is not None:
        import torch  # heavy: only once a run really starts

        torch.set_num_threads(request.threads)
    load_start = time.perf_counter()
    generator = make_generator(
        request.backend,
        request.model,
        dtype=request.dtype,
        device=request.device,
        batch_size=request.batch_size,
        config=planned.method_config.generation,
        seed=request.seed,
        threads=request.threads,
    )
    timings["model_load_s"] = time.perf_counter() - load_start
    loaded = generator.loaded
    _check_legacy_template(run_dir, loaded.tokenizer, bool(state.n_done) and bool(state.todo))
    thresholds, gate_info = gate_for({"id": loaded.model_id, "revision": loaded.revision})
    return Engine(generator, thresholds, gate_info)


def _seed_everything(seed: int) -> None:
    import numpy as np  # heavy: only once a run really starts
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


# -- 4. prepare ------------------------------------------------------------------------------------


def prepare(planned: RunPlan, engine: Engine, scorer, state: RunState, timings: dict):
    """The method's artifact, when replies are to be made, or when the results will record its sha256
    (a method that changes activations, finished for the first time); else None."""
    method = planned.method_config.method
    if not (state.todo or (method.changes_activations and state.previous is None)):
        return None
    request = planned.request
    prepare_start = time.perf_counter()
    context = PrepareContext(
        engine.generator.loaded,
        scorer,
        request.data_dir,
        request.dtype,
        request.batch_size,
        request.progress,
        log=_log,
    )
    artifact = method.prepare(context)
    timings["prepare_s"] = time.perf_counter() - prepare_start
    return artifact


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- 5. generate and score -------------------------------------------------------------------------


@dataclass
class _Chats:
    """The distinct chats to generate for, and the rows that share each one's reply."""

    conversations: list[list[dict]] = field(default_factory=list)
    rows: list[list[dict]] = field(default_factory=list)


def _distinct_chats(method, todo: list[dict]) -> _Chats:
    """Rows of a method that does not change activations whose chat is identical (`none` sends one chat
    for all six targets) share one generation: greedy decoding without interventions gives the same reply
    anyway. Rows of a method that does get a generation each."""
    chats = _Chats()
    index_of_chat: dict[str, int] = {}
    for row in todo:
        messages = method.messages(row, row["target_emotion"])
        key = row["id"] if method.changes_activations else json.dumps(messages)
        if key not in index_of_chat:
            index_of_chat[key] = len(chats.conversations)
            chats.conversations.append(messages)
            chats.rows.append([])
        chats.rows[index_of_chat[key]].append(row)
    return chats


def _jobs(method, artifact, chats: _Chats) -> list[tuple[list[int], list]]:
    """(chat indices, interventions) per generate call: one target emotion at a time for a method that
    changes activations (its hooks are the same for a whole batch), all chats at once otherwise."""
    if not method.changes_activations:
        return [(list(range(len(chats.conversations))), [])]
    by_target: dict[str, list[int]] = {}
    for index, rows_here in enumerate(chats.rows):
        by_target.setdefault(rows_here[0]["target_emotion"], []).append(index)
    return [(indices, method.interventions(artifact, target)) for target, indices in by_target.items()]


def _score_batch(engine: Engine, scorer, chats: _Chats, indices: list[int], replies: list[str]) -> list[SampleRecord]:
    """The records of one generated batch: every row sharing a reply, scored, with the reply's fluency
    under the unmodified model (the hooks are gone between batches), measured once per generation."""
    batch = [(row, index, reply) for index, reply in zip(indices, replies) for row in chats.rows[index]]
    verdicts = scorer.score([reply for _, _, reply in batch], [row["target_emotion"] for row, _, _ in batch])
    gate_rows = [chats.rows[i][0] for i in indices]
    fluency_of = dict(zip(indices, fluency_records(engine.generator.loaded, gate_rows, replies, engine.thresholds)))
    return [
        SampleRecord.of_row(row, chats.conversations[index], reply, Score.from_json(verdict), fluency_of[index])
        for (row, index, reply), verdict in zip(batch, verdicts)
    ]


def generate_and_score(planned: RunPlan, engine: Engine, scorer, artifact, run_dir: RunDir, state, timings) -> None:
    """Generate replies for the rows still to make, score each batch and append it to the samples file at
    once. A reply the scorer could not score (a judge that kept failing) is not saved: it is neither a hit
    nor a miss, and a rerun generates and scores it again."""
    method = planned.method_config.method
    chats = _distinct_chats(method, state.todo)
    bar = tqdm(
        total=len(planned.rows),
        initial=state.n_done,
        unit="reply",
        desc="generating",
        file=sys.stderr,
        disable=not planned.request.progress,
    )

    def save_batch(indices: list[int], replies: list[str]) -> None:
        score_start = time.perf_counter()
        records = _score_batch(engine, scorer, chats, indices, replies)
        run_dir.append([record for record in records if record.score.is_scored], state.own_file)
        timings["scoring_s"] += time.perf_counter() - score_start
        bar.update(len(records))

    generation_start = time.perf_counter()
    try:
        for indices, interventions in _jobs(method, artifact, chats):
            engine.generator.generate(
                [chats.conversations[i] for i in indices],
                on_batch=lambda local, replies, indices=indices: save_batch([indices[i] for i in local], replies),
                interventions=interventions,
            )
    finally:
        bar.close()
    scorer.check_failures()  # too many unscorable replies fail the run (one line), whatever is saved
    timings["generation_s"] = time.perf_counter() - generation_start - timings["scoring_s"]


# -- 6. collect ------------------------------------------------------------------------------------


def collect(planned: RunPlan, run_dir: RunDir, state: RunState) -> Collected:
    """Every row's sample, in selection order, once this process may merge them; sharded runs wait here
    for the others (ranks at a barrier; the last `--shard` process to end merges)."""
    request, rows = planned.request, planned.rows
    if request.distributed:
        wait_for_all_ranks()
        if request.shard[0] != 0:
            _log(f"rank {request.shard[0]}/{request.shard[1]} done; rank 0 merges the shards into results.json")
            return Collected()
    done = run_dir.completed(own=state.own_file)
    missing = sum(row["id"] not in done for row in rows)
    if missing:
        if request.shard is not None and not request.distributed:  # other shards are still at work: the last
            # one to end finishes
            print(
                f"shard {request.shard[0]}/{request.shard[1]} done; {missing} replies are "
                "left to other shards (the last shard to end writes results.json)",
                file=sys.stderr,
            )
            return Collected()
        raise UserError(f"{run_dir.path} lacks {missing} replies (unscored or not generated); rerun to finish")
    if request.shard is not None:  # merging needs the dir alone: wait until the other shards let go of it
        run_dir.lock_alone()
        if state.previous is None and run_dir.results_path.exists():  # another shard merged meanwhile
            return Collected(results=load_results(run_dir.path))
        done = run_dir.completed(own=state.own_file)  # read again, now that no shard writes any more
    return Collected(samples=[done[row["id"]] for row in rows])


# -- 7. fluency ------------------------------------------------------------------------------------


def measure_fluency(planned: RunPlan, engine: Engine, samples: list[dict], timings: dict) -> bool:
    """Samples of a run made before the fluency guard existed, or before its perplexity was measured under
    the neutral chat, are measured now; every verdict is then redrawn under this model's gate. True when
    samples changed (samples.jsonl is then rewritten)."""
    missing_fluency = [s for s in samples if not has_gate_perplexity(s.get("fluency"))]
    if missing_fluency:
        backfill_start = time.perf_counter()
        rows_by_id = {row["id"]: row for row in planned.rows}
        measure_samples(engine.generator.loaded, rows_by_id, missing_fluency, engine.thresholds)
        timings["fluency_backfill_s"] = time.perf_counter() - backfill_start
    regated = regate_samples(samples, engine.thresholds)
    return bool(missing_fluency) or regated


# -- 8. finalize -----------------------------------------------------------------------------------


def build_results(
    planned: RunPlan, engine: Engine, scorer, artifact, state: RunState, samples: list[dict], timings, started
) -> RunResults:
    """The run's results: new ones, or, when only the fluency metrics were missing, the earlier results
    with them added (how the replies were made is kept)."""
    fluency_metrics = {
        "fluency": aggregate_fluency(samples, engine.thresholds),
        "accuracy_fluent": fluent_accuracy(samples),
    }
    if state.previous is not None:
        previous = RunResults.from_json(state.previous)
        previous.metrics.update(fluency_metrics)
        previous.spec["fluency"] = engine.gate_info
        previous.sections["fluency_backfill"] = {"git": provenance.git_state(), "timings": timings}
        return previous
    timings["total_s"] = time.perf_counter() - started
    return RunResults(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        spec=_spec(planned, engine, scorer, artifact),
        metrics={
            "accuracy": grouped_accuracy(samples),
            "predicted_share": predicted_share(samples),
            "empty_replies": empty_replies(samples),
            **fluency_metrics,
        },
        timings={**timings, "samples_reused": len(planned.rows) - len(state.todo)},
    )


def finalize(run_dir: RunDir, samples: list[dict], results: RunResults, rewrite_samples: bool) -> dict:
    """Write the samples (merged, or rewritten when they changed), the summary and, last, results.json;
    returns the results document."""
    document = results.to_json()
    run_dir.finish(samples, results, summary_markdown(document), rewrite_samples=rewrite_samples)
    return document


def _spec(planned: RunPlan, engine: Engine, scorer, artifact) -> dict:
    """`results.json`'s `spec`: how the replies were made and scored, and where the run ran."""
    request, method_config, generator = planned.request, planned.method_config, engine.generator
    return {
        "method": {
            **method_config.as_dict(),
            "config_hash": method_config.config_hash,
            "artifact": provenance.artifact_info(artifact),
        },
        "model": provenance.model_info(generator.loaded, request.dtype),
        "backend": backend_info(generator),
        "generation": {
            **method_config.generation.as_dict(),
            "policy": method_config.decoding_policy,
            **provenance.template_info(generator.loaded.tokenizer),
        },
        "dataset": {
            "name": "SEV",
            "source": SOURCE_REPOSITORY,
            "commit": PINNED_COMMIT,
            "split": request.split,
            "sha256": planned.identity["dataset_sha256"],
            "selection": planned.identity["selection"],
            "n": len(planned.rows),
        },
        "scorer": scorer.info(),
        "fluency": engine.gate_info,
        "seed": request.seed,
        "hardware": provenance.hardware(generator.device),
        "software": provenance.software_versions(),
        "git": provenance.git_state(),
        "command": provenance.command_line(),
    }
