"""Fault injection: SIGKILL short runs on the tiny model at every write and at random moments, run writers
side by side, damage samples files; then the rerun must give exactly the files of an uninterrupted run.

Each run is a forked child of this process (the model code is imported once, so a run takes well under a
second) that may SIGKILL itself at its k-th write event: before and halfway through each append to a
samples file (a torn line), before and after each atomic rename (run.json, the merged samples.jsonl,
summary.md, results.json) and before each unlink (the merged shard files, the lock files). The random
kills are bounded by SEV_BENCH_FAULT_BUDGET_S seconds (default 15; raise it for a longer soak) and seeded
by SEV_BENCH_FAULT_SEED (default: random, printed with any failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
from test_run import FAST_PROMPTING

from sev_bench.errors import UserError
from sev_bench.results import RunDir, sample_lines
from sev_bench.runner import RunRequest, run

# 6 rows (one per skeleton): the skeleton hash puts 2 in shard 0 and 4 in shard 1; one reply per batch
SELECTION = {"emotions": ["anger"], "valences": ["neutral"], "limit": 6, "batch_size": 1}
WHOLE, SHARDS, SHARDS_REVERSED = [None], [(0, 2), (1, 2)], [(1, 2), (0, 2)]
SEQUENCES = {"whole": WHOLE, "shards": SHARDS, "shards-reversed": SHARDS_REVERSED}  # what a child runs
BUDGET_S = float(os.environ.get("SEV_BENCH_FAULT_BUDGET_S", "15"))
SEED = int(os.environ.get("SEV_BENCH_FAULT_SEED", random.randrange(1 << 30)))


def _request(out: Path, shard=None) -> RunRequest:
    return RunRequest(
        method=str(FAST_PROMPTING),
        model="tiny-random-qwen2",
        scorer="test-keywords",
        output_dir=str(out),
        progress=False,
        shard=shard,
        **SELECTION,
    )


def _run_sequence(out: Path, sequence: list) -> None:
    """Runs into `out`: a whole run, or shards one after the other."""
    for shard in sequence:
        run(_request(out, shard))


class _Faults:
    """Installed in a child: counts write events and, at event `at`, SIGKILLs the process (after writing
    half of an append, for the halfway events) or pauses it for `pause_s` seconds."""

    def __init__(self, at: int | None = None, pause_s: float = 0.0) -> None:
        self.at, self.pause_s, self.count = at, pause_s, 0

    def event(self, half_write=None) -> None:
        if self.count == self.at:
            if self.pause_s:
                time.sleep(self.pause_s)
            else:
                if half_write is not None:
                    half_write()
                os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1

    def install(self) -> None:
        faults, append, replace, unlink = self, RunDir.append, os.replace, Path.unlink

        def faulty_append(run_dir, records, path=None):
            faults.event()
            payload = sample_lines(records).encode()

            def half_write():
                with open(path or run_dir.samples_path, "ab") as handle:
                    handle.write(payload[: len(payload) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())

            faults.event(half_write)
            append(run_dir, records, path)

        def faulty_replace(source, target, **kwargs):
            faults.event()
            replace(source, target, **kwargs)
            faults.event()

        def faulty_unlink(path, *args, **kwargs):
            faults.event()
            unlink(path, *args, **kwargs)

        RunDir.append, os.replace, Path.unlink = faulty_append, faulty_replace, faulty_unlink


def _child(out: Path, sequence: list, faults: _Faults | None = None, report: Path | None = None) -> int:
    """Fork a child that runs `sequence` into `out` (with `faults` installed); returns its pid. It exits 0,
    2 on a UserError (its message in out/../child.log), 1 on anything else (traceback there)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        log = os.open(out.parent / "child.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if faults is not None:
            faults.install()
        try:
            _run_sequence(out, sequence)
            code = 0
        except UserError as exc:
            os.write(2, f"sev-bench: error: {exc}\n".encode())
            code = 2
        if report is not None and faults is not None:
            report.write_text(str(faults.count))
    except BaseException:
        os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(code)


def _wait(pid: int) -> int:
    """The child's exit code, or -signal when a signal ended it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _files(out: Path) -> dict[str, object]:
    """What must equal an uninterrupted run: the samples (as a set of lines, each once), results.json
    without its clock and timings, summary.md without its wall-time line, run.json, and the file names."""
    lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)), f"{out}: a sample line is there twice"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for volatile in ("created", "timings"):
        results.pop(volatile)
    summary = [line for line in (out / "summary.md").read_text().splitlines() if not line.startswith("- wall time")]
    return {
        "samples": sorted(lines),
        "results": results,
        "summary": summary,
        "run.json": json.loads((out / "run.json").read_text(encoding="utf-8")),
        "names": sorted(p.name for p in out.iterdir()),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The files of one uninterrupted whole run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run_sequence(out, WHOLE)
    files = _files(out)
    assert len(files["samples"]) == 6 and files["names"] == ["results.json", "run.json", "samples.jsonl", "summary.md"]
    return files


def test_a_kill_at_any_write_of_a_sharded_run_loses_and_duplicates_nothing(tmp_path, reference):
    """Every write event of shard 0 then shard 1 (appends, run.json, the merge, summary.md, results.json,
    the lock files) is a kill point; after each kill the rerun completes the run exactly."""
    counting = tmp_path / "count" / "run"
    counting.parent.mkdir()
    report = tmp_path / "count" / "events"
    assert _wait(_child(counting, SHARDS, _Faults(), report)) == 0
    assert _files(counting) == reference
    events = int(report.read_text())
    assert events >= 15, events  # 6 replies x 2, run.json, the merge and the final writes
    for at in range(events):
        out = tmp_path / f"kill-{at:02d}" / "run"
        out.parent.mkdir()
        assert _wait(_child(out, SHARDS, _Faults(at))) == -signal.SIGKILL, f"event {at} was not reached"
        _run_sequence(out, SHARDS)
        assert _files(out) == reference, f"after a kill at write event {at}"
    print(f"{events} write events, each a kill point")


def test_random_kills_over_many_short_runs(tmp_path, reference):
    """Whole and sharded runs killed at random moments, one to three times each, then rerun (sometimes
    the other way: a whole run finishing shards, or shards finishing a whole run); seeded, time-bounded."""
    rng = random.Random(SEED)
    durations = {}
    for sequence in SEQUENCES:  # how long each takes uninterrupted, here and now
        out = tmp_path / f"timing-{sequence}" / "run"
        out.parent.mkdir()
        started = time.perf_counter()
        assert _wait(_child(out, SEQUENCES[sequence])) == 0
        durations[sequence] = time.perf_counter() - started
        assert _files(out) == reference
    deadline, trials, kills = time.monotonic() + BUDGET_S, 0, 0
    while time.monotonic() < deadline or trials < 3:
        trials += 1
        out = tmp_path / f"trial-{trials:03d}" / "run"
        out.parent.mkdir()
        history = []
        for _ in range(rng.randint(1, 3)):
            sequence = rng.choice(list(SEQUENCES))
            delay = rng.uniform(0, 1.1 * durations[sequence])
            pid = _child(out, SEQUENCES[sequence])
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            code = _wait(pid)
            kills += code == -signal.SIGKILL
            history.append(f"{sequence} killed after {delay:.3f}s ({code})")
        finish = rng.choice(list(SEQUENCES))
        _run_sequence(out, SEQUENCES[finish])
        assert _files(out) == reference, f"seed {SEED}, trial {trials}: {history}, then {finish}"
    assert kills >= trials  # most kills land inside a run
    print(f"{trials} trials, {kills} kills inside a run, seed {SEED}")


def test_concurrent_writers_are_refused(tmp_path, reference):
    """A second whole run, or a second process on the same shard, is refused while the first writes;
    the other shard runs beside it. The first writer then finishes as if alone."""
    out = tmp_path / "whole" / "run"
    out.parent.mkdir()
    first = _child(out, WHOLE, _Faults(at=0, pause_s=3.0))  # holds the dir, paused at its first write
    time.sleep(0.5)
    assert _wait(_child(out, WHOLE)) == 2
    assert "is in use by another sev-bench run" in (out.parent / "child.log").read_text()
    assert _wait(first) == 0
    assert _files(out) == reference

    out = tmp_path / "shards" / "run"
    out.parent.mkdir()
    first = _child(out, SHARDS, _Faults(at=0, pause_s=4.0))  # shard 0, paused at its first write
    time.sleep(0.5)
    assert _wait(_child(out, [(0, 2)])) == 2
    assert "shard 0/2 of --output-dir" in (out.parent / "child.log").read_text()
    assert _wait(_child(out, [(1, 2)])) == 0  # the other shard writes beside it
    assert len((out / "samples.shard-1-of-2.jsonl").read_text().splitlines()) == 4
    assert _wait(first) == 0  # then shard 0, and its shard-1 run (nothing left to do) merges
    assert _files(out) == reference


def test_the_issue_reproduction_two_identical_runs_at_once(tmp_path, reference):
    """`$C & $C & wait`: never 12 lines for 6 samples; one run writes, the other is refused or finds the
    run complete."""
    out = tmp_path / "both" / "run"
    out.parent.mkdir()
    codes = sorted(_wait(pid) for pid in [_child(out, WHOLE), _child(out, WHOLE)])
    assert codes in ([0, 0], [0, 2]), codes
    assert _files(out) == reference


def test_damaged_shard_files_are_recovered(tmp_path, reference, capsys):
    """Garbage in the middle of a shard's file, a line that is no sample and a repeated line: the shard's
    rerun keeps its valid samples and sets the rest aside; damage in another shard's file is set aside at
    the merge."""
    out = tmp_path / "run"
    run(_request(out, (1, 2)))  # shard 1's 4 replies; shard 0 still to do
    shard_one = out / "samples.shard-1-of-2.jsonl"
    lines = shard_one.read_text().splitlines(keepends=True)
    damage = ['{"id": 7}\n', "[]\n", lines[0], "}{ not json\n"]
    shard_one.write_text("".join(lines[:2] + damage[:3] + lines[2:] + damage[3:]))
    run(_request(out, (0, 2)))  # shard 0 completes the run: it merges, setting shard 1's damage aside
    assert "4 damaged line(s)" in capsys.readouterr().err
    assert (out / "samples.damaged.jsonl").read_text() == "".join(damage)
    (out / "samples.damaged.jsonl").unlink()
    assert _files(out) == reference
