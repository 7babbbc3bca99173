"""The run directory: versioned `results.json`, append-only `samples.jsonl`, `summary.md`.

Resume contract: `run.json` pins the run's identity (method, params, model, scorer, data, generation
settings); it is written once the run's checks have passed and its model has loaded, so a run that
fails before that leaves the dir free for the corrected command. A rerun into the same dir with the
same identity skips every sample already written and appends the rest; a different identity is refused.

One writer at a time: a run holds `.lock` in the dir (exclusively; the shards of a sharded run share
it and each holds its own shard's lock), and a second writer is refused. A kill can leave at most a torn
last line in a samples file: it is dropped on resume (that sample is redone). Any other unreadable
line (not JSON, not a sample, an id written twice) is moved to `samples.damaged.jsonl`, with a note
on stderr; every valid sample is kept. `results.json` and `summary.md` are written atomically and only
when every sample is in. The last process to leave the dir removes the lock files.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from .atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from .errors import UserError
from .prompts import EMOTIONS, VALENCES
from .records import SAMPLES_FILE, SCHEMA_VERSION, RunResults, SampleRecord, results_json, sample_json
from .results_schema import schema_problem

# SCHEMA_VERSION (defined with the records) is imported from here by the leaderboard.

# Identity keys added after runs were published: a run dir whose run.json lacks one of them (and that
# otherwise matches) still resumes, with its run.json unchanged; `RunDir.legacy_keys` lists what it lacks.
IDENTITY_ADDED_KEYS = ("chat_template_kwargs",)
SAMPLE_FIELDS = (
    "id",
    "skeleton_id",
    "theme",
    "valence",
    "target_emotion",
    "messages",
    "completion",
    "predicted_emotion",
    "probs",
    "correct",
)
# What a resumed run needs of a sample line; `messages` may be missing (the leaderboard's copies drop it).
RESUME_FIELDS = tuple(field for field in SAMPLE_FIELDS if field != "messages")
DAMAGED_FILE = "samples.damaged.jsonl"


def sample_lines(records: list[SampleRecord | dict]) -> str:
    """samples.jsonl lines: every sample line of a run dir is written by this function."""
    return "".join(json.dumps(sample_json(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)


def _is_sample(record) -> bool:
    return (
        isinstance(record, dict)
        and all(key in record for key in RESUME_FIELDS)
        and isinstance(record["id"], str)
        and isinstance(record["completion"], str)
        and isinstance(record["correct"], bool)
    )


def read_sample_file(path: Path) -> tuple[list[tuple[dict, bytes]], list[bytes], bool]:
    """(valid samples with their lines, damaged lines, whether the last line is torn). A line is damaged
    when it is not JSON, not a sample object, or repeats an id of an earlier line of the file."""
    valid, damaged, seen = [], [], set()
    torn = False
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):  # appends are whole lines: only a kill mid-write leaves this
                torn = True
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw, parse_constant=reject_constant)
            except ValueError:
                record = None
            if not _is_sample(record) or record["id"] in seen:
                damaged.append(raw)
                continue
            seen.add(record["id"])
            valid.append((record, raw))
    return valid, damaged, torn


def reject_constant(name: str):
    """`json.loads(..., parse_constant=reject_constant)`: NaN and Infinity, which Python writes but JSON
    has not, are an error instead of a number."""
    raise ValueError(f"{name} is not valid JSON")


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.samples_path = self.path / SAMPLES_FILE
        self.identity_path = self.path / "run.json"
        self.results_path = self.path / "results.json"
        self.summary_path = self.path / "summary.md"
        self.damaged_path = self.path / DAMAGED_FILE
        self.lock_path = self.path / ".lock"
        self._dir_lock: int | None = None
        self._shard_lock: int | None = None
        self._alone = False  # this process holds the dir lock exclusively: no one else writes here
        self.legacy_keys: list[str] = []  # IDENTITY_ADDED_KEYS that this dir's run.json predates
        self._rewrite_identity = False  # a run.json that predates those keys, in a dir with nothing made yet

    # -- one writer at a time ----------------------------------------------------------------------

    def lock(self, shard: tuple[int, int] | None = None) -> None:
        """Take the dir for this process: alone, or (with `shard`) beside the other shards of the same
        run, each shard taken by one process only. A second writer is a one-line UserError."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._dir_lock = _acquire(self.lock_path, (fcntl.LOCK_SH if shard else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        if self._dir_lock is None:
            raise UserError(
                f"--output-dir {self.path} is in use by another sev-bench run; wait for it to end "
                "(then rerun to resume) or use a new --output-dir"
            )
        self._alone = shard is None
        if shard is not None:
            index, count = shard
            self._shard_lock = _acquire(self.path / f".shard-{index}-of-{count}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._shard_lock is None:
                self.release()
                raise UserError(f"shard {index}/{count} of --output-dir {self.path} is being run by another process")

    def lock_alone(self) -> None:
        """A shard's shared lock made exclusive (blocking until the other shards let go), to merge."""
        fcntl.flock(self._dir_lock, fcntl.LOCK_UN)  # first, or two shards waiting for each other deadlock
        os.close(self._dir_lock)
        self._dir_lock = _acquire(self.lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self._dir_lock is None:
            print(f"waiting for the other shards' processes to let go of {self.path} ...", file=sys.stderr, flush=True)
            self._dir_lock = _acquire(self.lock_path, fcntl.LOCK_EX)
        self._alone = True

    def release(self) -> None:
        """Let go of the dir. A process that held it alone removes the lock files first (the next writer
        makes new ones), and temporary files of atomic writes cut off by a kill."""
        if self._alone:
            self._remove_locks()
        for fd in (self._shard_lock, self._dir_lock):
            if fd is not None:
                os.close(fd)  # closing drops the lock
        self._dir_lock = self._shard_lock = None
        self._alone = False

    def _remove_locks(self) -> None:
        """Only while holding the dir alone: a process waiting on a removed lock file retries (`_acquire`)."""
        for path in [*self.path.glob(".shard-*.lock"), *self.path.glob(".*.tmp")]:
            path.unlink(missing_ok=True)
        self.lock_path.unlink(missing_ok=True)

    # -- identity ----------------------------------------------------------------------------------

    def check_identity(self, identity: dict, scorer_loaded: bool = True) -> None:
        """Refuse a dir that holds another run (before the scorer loads, only its id is compared)."""
        if self.identity_path.exists():
            try:
                previous = json.loads(self.identity_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                previous = None
            if not isinstance(previous, dict) or not isinstance(previous.get("scorer"), dict):
                raise UserError(f"{self.identity_path} is unreadable; use a new --output-dir")
            if not scorer_loaded:
                previous = {**previous, "scorer": {"id": previous["scorer"].get("id")}}
            identity = json.loads(json.dumps(identity))
            # A run.json that lacks keys added since (IDENTITY_ADDED_KEYS) is compared without them: the run
            # predates them. It is kept as it is when samples exist, rewritten in full when nothing was made.
            legacy = [k for k in IDENTITY_ADDED_KEYS if k in identity and k not in previous]
            identity = {k: v for k, v in identity.items() if k not in legacy}
            made = bool(self._sample_files()) or self.results_path.exists()
            self.legacy_keys = legacy if made else []
            self._rewrite_identity = bool(legacy) and not made
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            if changed:
                raise UserError(
                    f"--output-dir {self.path} holds a different run (differs in: {', '.join(changed)}); "
                    "use a new --output-dir"
                )
        elif any(p.stat().st_size for p in self._sample_files()) or self.results_path.exists():
            raise UserError(f"--output-dir {self.path} holds results of an unknown run; use a new --output-dir")

    def claim(self, identity: dict) -> None:
        """Write `run.json`: from now on the dir belongs to this run (called once every check passed)."""
        self.check_identity(identity)
        if not self.identity_path.exists() or self._rewrite_identity:
            write_json_atomic(self.identity_path, identity)

    # -- samples -----------------------------------------------------------------------------------

    def shard_path(self, shard: tuple[int, int] | None) -> Path:
        """Where this process appends: `samples.jsonl`, or its own file when it runs one shard (so that
        concurrent shards never write to, or cut a torn line from, each other's file)."""
        if shard is None:
            return self.samples_path
        index, count = shard
        return self.path / f"samples.shard-{index}-of-{count}.jsonl"

    def _sample_files(self) -> list[Path]:
        return [p for p in [self.samples_path, *sorted(self.path.glob("samples.shard-*.jsonl"))] if p.exists()]

    def completed(self, own: Path | None = None) -> dict[str, dict]:
        """Samples already written (in any shard's file), by id. The file this process appends to (`own`;
        every file when it holds the dir alone) is cleaned: a torn last line is cut off and damaged lines
        go to `samples.damaged.jsonl`, with a note on stderr. Other files are read, skipping the damage."""
        done: dict[str, dict] = {}
        for path in self._sample_files():
            valid, damaged, torn = read_sample_file(path)
            if path == own or self._alone:
                self._repair(path, valid, damaged, torn)
            for record, _ in valid:
                done.setdefault(record["id"], record)
        return done

    def _repair(self, path: Path, valid: list[tuple[dict, bytes]], damaged: list[bytes], torn: bool) -> None:
        if not damaged and not torn:
            return
        if damaged:  # kept before the file is rewritten without them: a kill in between loses nothing
            with open(self.damaged_path, "ab") as handle:
                handle.write(b"".join(damaged))
                handle.flush()
                os.fsync(handle.fileno())
        write_bytes_atomic(path, b"".join(raw for _, raw in valid))
        if damaged:
            print(
                f"sev-bench: {path}: {len(damaged)} damaged line(s) (not JSON, not a sample, or an id written twice) "
                f"moved to {DAMAGED_FILE}; {len(valid)} valid sample(s) kept, missing replies are made again",
                file=sys.stderr,
            )
        if torn:
            print(f"sev-bench: {path}: dropped a torn last line (a write cut off by a kill)", file=sys.stderr)

    def append(self, records: list[SampleRecord | dict], path: Path | None = None) -> None:
        """Append finished samples durably (one write, flushed and fsynced)."""
        if not records:
            return
        with open(path or self.samples_path, "a", encoding="utf-8") as handle:
            handle.write(sample_lines(records))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(
        self, samples: list[dict], results: RunResults | dict, summary: str, rewrite_samples: bool = False
    ) -> None:
        """Merge every shard's samples into `samples.jsonl` (in selection order), then write the summary
        and, last, `results.json`: its presence means the run is complete. The caller holds the dir alone
        (`lock`, or `lock_alone` for a shard). `rewrite_samples` rewrites `samples.jsonl` from `samples`
        also without shards (records that gained fields)."""
        shard_files = [p for p in self._sample_files() if p != self.samples_path]
        if shard_files or rewrite_samples:
            write_text_atomic(self.samples_path, sample_lines(samples))
            for path in shard_files:
                path.unlink()
        write_text_atomic(self.summary_path, summary)
        write_json_atomic(self.results_path, results_json(results))


def _acquire(path: Path, operation: int) -> int | None:
    """An fd holding `flock(operation)` on the lock file `path` (created if needed), or None when the
    lock is taken and `operation` has LOCK_NB. A lock won on a file that was removed meanwhile (a run
    completing removes its lock files) is worthless: then try again on the new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def load_results(path: str | Path) -> dict:
    """A results.json (or the one inside a run dir), checked against the schema version."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no results.json (an unfinished run has none)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a results file (not a JSON object)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION!r}")
    problem = schema_problem(data)
    if problem:
        raise UserError(f"{path}: not a complete results file ({problem})")
    return data


def _pct(cell: dict | None) -> str:
    if not cell or cell.get("acc") is None:
        return "-"
    return f"{100 * cell['acc']:.1f}"


def _ci(cell: dict) -> str:
    return f"95% CI {100 * cell['ci95'][0]:.1f}-{100 * cell['ci95'][1]:.1f}, {cell['correct']}/{cell['n']}"


def _table(accuracy: dict, emotions: list[str], valences: list[str]) -> list[str]:
    lines = [
        "| valence | " + " | ".join(emotions) + " | all |",
        "| --- | " + " | ".join("---:" for _ in emotions) + " | ---: |",
    ]
    for valence in valences:
        row = accuracy["by_valence_emotion"].get(valence, {})
        cells = [_pct(row.get(e)) for e in emotions] + [f"**{_pct(accuracy['by_valence'].get(valence))}**"]
        lines.append(f"| {valence} | " + " | ".join(cells) + " |")
    cells = [f"**{_pct(accuracy['by_emotion'].get(e))}**" for e in emotions] + [f"**{_pct(accuracy['overall'])}**"]
    lines.append("| all | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(results: dict) -> str:
    """People's view of a run: fluent accuracy first (a hit counts only if the reply is also fluent), raw
    accuracy beside it, then the valence x emotion tables of both with counts and 95% intervals. A run
    without fluency records shows "-" for fluent accuracy."""
    accuracy = results["metrics"]["accuracy"]
    emotions = [e for e in EMOTIONS if e in accuracy["by_emotion"]]
    valences = [v for v in VALENCES if v in accuracy["by_valence"]]
    spec = results["spec"]
    overall = accuracy["overall"]
    fluent, fluency = results["metrics"].get("accuracy_fluent"), results["metrics"].get("fluency")
    fluent_overall = fluent.get("overall") if isinstance(fluent, dict) else None
    lines = [
        f"# sev-bench run: {spec['method']['name']} on {spec['model']['id']}",
        "",
        f"- split: {spec['dataset']['split']} ({overall['n']} replies), scorer: {spec['scorer']['id']}, "
        f"backend: {spec['backend']['name']} ({spec['model']['dtype']}, {spec['hardware']['device']})",
    ]
    if fluent_overall:
        line = f"- fluent accuracy: **{_pct(fluent_overall)}%** ({_ci(fluent_overall)}; "
        line += "a hit counts only if the reply is fluent"
        if fluency:
            median = fluency["perplexity_median"]
            line += (
                f": {100 * fluency['fluent_share']:.1f}% are; median perplexity "
                + ("-" if median is None else f"{median:.1f}")
                + f", repeated 4-gram in {100 * fluency['repeated_4gram_share']:.1f}%"
            )
        lines.append(line + ")")
    else:
        lines.append("- fluent accuracy: **-** (no fluency records)")
    lines += [
        f"- raw accuracy: {_pct(overall)}% ({_ci(overall)}; the scorer's verdict alone)",
        f"- wall time: {results['timings']['total_s']:.0f} s "
        f"(generation {results['timings']['generation_s']:.0f} s, scoring {results['timings']['scoring_s']:.0f} s)",
    ]
    empty = results["metrics"].get("empty_replies")
    if empty:
        lines.append(f"- empty replies: {empty} of {overall['n']} (scored `none`, never correct)")
    if fluent_overall:
        lines += [
            "",
            "Fluent accuracy (%) = share of replies whose predicted emotion is the target and that pass the fluency "
            "gate, by valence context:",
            "",
            *_table(fluent, emotions, valences),
        ]
    lines += [
        "",
        "Raw accuracy (%) = share of replies whose predicted emotion is the target, by valence context:",
        "",
        *_table(accuracy, emotions, valences),
    ]
    predicted = results["metrics"].get("predicted_share")
    if predicted:
        lines += [
            "",
            "Share of replies (%) the scorer assigns to each emotion, whatever the target:",
            "",
            "| " + " | ".join(predicted) + " |",
            "| " + " | ".join("---:" for _ in predicted) + " |",
            "| " + " | ".join(f"{100 * share:.1f}" for share in predicted.values()) + " |",
        ]
    return "\n".join(lines) + "\n"
