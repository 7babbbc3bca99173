"""The run directory: versioned `results.json`, append-only `samples.jsonl`, `summary.md`.

Resume contract: `run.json` (written when the run starts) pins the run's identity (method, params,
model, scorer, data, generation settings); a rerun into the same dir with the same identity skips
every sample already in `samples.jsonl` and appends the rest; a different identity is refused.
A kill can leave at most a torn last line in `samples.jsonl`: it is dropped on resume (that sample is
redone). `results.json` and `summary.md` are written atomically and only when every sample is in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import write_json_atomic, write_text_atomic
from .errors import UserError
from .prompts import EMOTIONS, VALENCES

SCHEMA_VERSION = "1.0"
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


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.samples_path = self.path / "samples.jsonl"
        self.identity_path = self.path / "run.json"
        self.results_path = self.path / "results.json"
        self.summary_path = self.path / "summary.md"
        self.legacy_keys: list[str] = []  # IDENTITY_ADDED_KEYS that this dir's run.json predates

    def start(self, identity: dict) -> None:
        """Claim the dir for a run with `identity`, or confirm it is the same run (resume). A run.json that
        lacks keys of IDENTITY_ADDED_KEYS is compared without them (the run predates them): kept as it is
        when samples exist, rewritten with the full identity when none do."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.identity_path.exists():
            try:
                previous = json.loads(self.identity_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise UserError(f"{self.identity_path} is unreadable; use a new --output-dir") from None
            if not isinstance(previous, dict):
                raise UserError(f"{self.identity_path} is unreadable; use a new --output-dir")
            full = identity
            legacy = [k for k in IDENTITY_ADDED_KEYS if k in identity and k not in previous]
            if legacy:
                identity = {k: v for k, v in identity.items() if k not in legacy}
                if self._sample_files() or self.results_path.exists():
                    self.legacy_keys = legacy
                elif previous == json.loads(json.dumps(identity)):  # nothing made yet: start it afresh
                    write_json_atomic(self.identity_path, full)
                    return
            if previous != json.loads(json.dumps(identity)):
                changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
                raise UserError(
                    f"--output-dir {self.path} holds a different run (differs in: {', '.join(changed)}); "
                    "use a new --output-dir"
                )
        elif self._sample_files() or self.results_path.exists():
            raise UserError(f"--output-dir {self.path} holds results of an unknown run; use a new --output-dir")
        else:
            write_json_atomic(self.identity_path, identity)

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
        """Samples already written (in any shard's file), by id. A torn last line (a kill mid-write) is
        cut off `own`, the file this process appends to; other files are read up to their last whole line."""
        done: dict[str, dict] = {}
        for path in self._sample_files():
            good_bytes = 0
            with open(path, "rb") as handle:
                for raw in handle:
                    try:
                        record = json.loads(raw)
                        if not raw.endswith(b"\n"):
                            raise ValueError("torn line")
                    except ValueError:
                        break  # only the last line can be torn: appends are whole lines
                    done.setdefault(record["id"], record)
                    good_bytes += len(raw)
            if path == own and good_bytes != path.stat().st_size:
                with open(path, "r+b") as handle:
                    handle.truncate(good_bytes)
        return done

    def append(self, records: list[dict], path: Path | None = None) -> None:
        """Append finished samples durably (one write, flushed and fsynced)."""
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(path or self.samples_path, "a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, samples: list[dict], results: dict, summary: str, rewrite_samples: bool = False) -> None:
        """Merge every shard's samples into `samples.jsonl` (in selection order), then write the summary
        and, last, `results.json`: its presence means the run is complete. Serialised by a lock so that
        two shards finishing together do not merge at the same time. `rewrite_samples` rewrites
        `samples.jsonl` from `samples` also without shards (records that gained fields)."""
        import fcntl

        with open(self.path / ".finish.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shard_files = [p for p in self._sample_files() if p != self.samples_path]
            if shard_files or rewrite_samples:
                write_text_atomic(self.samples_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
                for path in shard_files:
                    path.unlink(missing_ok=True)  # a shard finishing at the same moment may have merged
            write_text_atomic(self.summary_path, summary)
            write_json_atomic(self.results_path, results)
        (self.path / ".finish.lock").unlink(missing_ok=True)


def load_results(path: str | Path) -> dict:
    """A results.json (or the one inside a run dir), checked against the schema version."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no results.json (an unfinished run has none)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable results file ({exc})") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION!r}")
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
