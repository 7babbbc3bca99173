"""`sev-bench leaderboard build`: validate every run dir under a leaderboard folder and write, from those
files alone, `README.md` (generated header with the submission guide, then one table per model),
`leaderboard.csv`, a static `index.html` (sortable tables, per-valence bar charts, no external URLs) and
`plots/` (PNG).

Rebuilding from the same files gives byte-identical output: no clock is read, every iteration is sorted,
floats are formatted to fixed digits and the plots carry no timestamps.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .backends.hf import DEFAULT_MAX_NEW_TOKENS
from .data import PINNED_COMMIT, SEV_FILES
from .errors import UserError
from .fluency import GATE_CHAT
from .hashing import slug
from .metrics import grouped_accuracy
from .prompts import EMOTIONS, VALENCES
from .results import SCHEMA_VERSION, reject_constant
from .results_schema import schema_problem

BENCHMARK_SPLIT = "test"
FULL_SPLIT = f"full {BENCHMARK_SPLIT} split"  # the selection label of a run on the whole split
BENCHMARK_DECODING = {"do_sample": False, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
# Top-level folders of the leaderboard dir that hold no entries: `ci/` is the CI regression baseline (a
# small subset, not a benchmark result), `plots/` is written by the build itself.
EXCLUDED_DIRS = ("ci", "plots")
GENERATED = ("README.md", "leaderboard.csv", "index.html")
TOLERANCE = 1e-9  # acc / ci95 recomputed from samples.jsonl must match to this


class Refused(Exception):
    """A run dir that cannot go on the board; the message is one line."""


@dataclass
class Entry:
    path: str  # run dir relative to the leaderboard dir, posix
    results: dict
    # Always true since runs without samples are refused; kept so the README and CSV columns stay as they were.
    samples_checked: bool
    group: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.group = (self.model, selection_label(self.spec["dataset"]))

    @property
    def spec(self) -> dict:
        return self.results["spec"]

    @property
    def accuracy(self) -> dict:
        return self.results["metrics"]["accuracy"]

    @property
    def model(self) -> str:
        return self.spec["model"]["id"]

    @property
    def method(self) -> str:
        return self.spec["method"]["name"]

    @property
    def neutral_gate(self) -> bool:
        """Whether the run's fluency verdicts come from the method-neutral gate (every reply's perplexity
        under the same neutral chat); older runs measured each reply under its own method's chat."""
        return (self.spec.get("fluency") or {}).get("perplexity_chat") == GATE_CHAT

    @property
    def fluent_accuracy(self) -> dict | None:
        """`metrics.accuracy_fluent` as a grouped block (overall, by valence, ...), or None (no fluency records,
        or records of the old, method-conditioned gate)."""
        block = self.results["metrics"].get("accuracy_fluent")
        usable = isinstance(block, dict) and fluent_cell(block) is not None and "overall" in block
        return block if usable and self.neutral_gate else None

    @property
    def fluent(self) -> dict | None:
        return fluent_cell(self.results["metrics"].get("accuracy_fluent")) if self.neutral_gate else None

    @property
    def fluent_share(self) -> float | None:
        """The share of replies that pass the fluency gate (`metrics.fluency.fluent_share`), or None."""
        value = (self.results["metrics"].get("fluency") or {}).get("fluent_share")
        return value if isinstance(value, (int, float)) and self.fluent is not None else None

    def fluent_group(self, block: str, name: str) -> dict | None:
        """One cell of the fluent block (`by_valence` / `by_emotion`), or None."""
        fluent = self.fluent_accuracy
        return (fluent.get(block) or {}).get(name) if fluent else None

    @property
    def scorer_agreement(self) -> float | None:
        agreement = self.spec["scorer"].get("agreement") or {}
        value = agreement.get("agreement")
        return value if isinstance(value, (int, float)) else None

    @property
    def own_decoding(self) -> bool:
        return is_own_decoding(self.spec["generation"])

    @property
    def decoding(self) -> str:
        return decoding_label(self.spec["generation"])

    @property
    def date(self) -> str:
        return str(self.results.get("created", ""))[:10]

    @property
    def config_hash(self) -> str:
        return str(self.spec["method"]["config_hash"])

    @property
    def slug(self) -> str:
        return slug(self.path.replace("/", "__"), keep="-._") or "run"


# -- validation ------------------------------------------------------------------------------------------


def pinned_sha256() -> dict[str, str]:
    """The sha256 of each SEV file of the pinned release (what every entry must have read)."""
    return {name: pinned.sha256 for name, pinned in SEV_FILES.items()}


def _cell_difference(path: str, stated: dict, recomputed: dict) -> str | None:
    for key in ("n", "correct"):
        if stated.get(key) != recomputed.get(key):
            return f"{path}.{key} is {stated.get(key)} in results.json, {recomputed.get(key)} from samples"
    for key in ("acc",):
        a, b = stated.get(key), recomputed.get(key)
        if (a is None) != (b is None) or (a is not None and abs(a - b) > TOLERANCE):
            return f"{path}.{key} is {a} in results.json, {b} from samples"
    for side, (a, b) in zip(("low", "high"), zip(stated.get("ci95") or [], recomputed.get("ci95") or [])):
        if abs(a - b) > TOLERANCE:
            return f"{path}.ci95 {side} is {a} in results.json, {b} from samples"
    return None


def accuracy_difference(stated: dict, recomputed: dict, prefix: str = "accuracy") -> str | None:
    """The first cell where a stated accuracy block differs from one recomputed from samples, or None."""
    problem = _cell_difference(f"{prefix}.overall", stated["overall"], recomputed["overall"])
    if problem:
        return problem
    for block in ("by_valence", "by_emotion"):
        if sorted(stated[block]) != sorted(recomputed[block]):
            return f"{prefix}.{block} lists {sorted(stated[block])}, samples give {sorted(recomputed[block])}"
        for name in sorted(stated[block]):
            problem = _cell_difference(f"{prefix}.{block}.{name}", stated[block][name], recomputed[block][name])
            if problem:
                return problem
    for valence in sorted(stated["by_valence_emotion"]):
        row, other = stated["by_valence_emotion"][valence], recomputed["by_valence_emotion"].get(valence, {})
        for emotion in sorted(row):
            if emotion not in other:
                return f"{prefix}.by_valence_emotion.{valence}.{emotion} has no samples"
            problem = _cell_difference(f"{prefix}.by_valence_emotion.{valence}.{emotion}", row[emotion], other[emotion])
            if problem:
                return problem
    return None


def read_samples(path: Path) -> list[dict]:
    """samples.jsonl as records; Refused on an unreadable line, a missing key or a duplicate id."""
    samples, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=reject_constant)
            except ValueError:
                raise Refused(f"{path.name} line {number} is not JSON") from None
            if not isinstance(record, dict):
                raise Refused(f"{path.name} line {number} is not a JSON object")
            for key in ("id", "valence", "target_emotion", "correct"):
                if key not in record:
                    raise Refused(f"{path.name} line {number} lacks {key!r}")
            if record["id"] in seen:
                raise Refused(f"{path.name} has id {record['id']!r} twice")
            seen.add(record["id"])
            predicted = record.get("predicted_emotion")
            if predicted is not None and bool(record["correct"]) != (predicted == record["target_emotion"]):
                raise Refused(f"{path.name} line {number}: 'correct' disagrees with predicted_emotion")
            samples.append(record)
    return samples


def _fluent_flag(sample: dict) -> bool | None:
    """A sample's fluency verdict (`fluency.fluent`, as `sev-bench run` writes it), or None."""
    fluency = sample.get("fluency")
    return bool(fluency["fluent"]) if isinstance(fluency, dict) and "fluent" in fluency else None


def validate_run(run_dir: Path, root: Path | None = None) -> Entry:
    """A run dir as a leaderboard entry, or Refused with a one-line reason."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"), parse_constant=reject_constant)
    except OSError as exc:
        raise Refused(f"results.json is unreadable ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"results.json is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(results, dict):
        raise Refused("results.json is not a JSON object")
    if "schema_version" not in results:
        raise Refused("missing field schema_version")
    if results["schema_version"] != SCHEMA_VERSION:
        raise Refused(f"unknown schema_version {results['schema_version']!r} (this sev-bench reads {SCHEMA_VERSION!r})")
    problem = schema_problem(results)
    if problem:
        raise Refused(problem)

    dataset = results["spec"]["dataset"]
    if dataset["split"] != BENCHMARK_SPLIT:
        raise Refused(f"dataset split {dataset['split']!r} is not the benchmark's ({BENCHMARK_SPLIT!r})")
    if dataset["commit"] != PINNED_COMMIT:
        raise Refused(
            f"dataset commit {str(dataset['commit'])[:12]} is not the pinned SEV release {PINNED_COMMIT[:12]}"
        )
    stated = dataset["sha256"] if isinstance(dataset["sha256"], dict) else {}
    for name, sha in pinned_sha256().items():
        if stated.get(name) != sha:
            got = str(stated.get(name))[:12] if stated.get(name) else "missing"
            raise Refused(
                f"dataset sha256 of {SEV_FILES[name].local} is {got}, not the pinned SEV release's {sha[:12]}"
            )
    accuracy = results["metrics"]["accuracy"]
    if accuracy["overall"]["n"] != dataset["n"]:
        raise Refused(f"metrics.accuracy.overall.n is {accuracy['overall']['n']}, spec.dataset.n is {dataset['n']}")

    samples_name = str(results["samples_file"])
    if Path(samples_name).name != samples_name or samples_name in ("", ".", ".."):
        raise Refused(f"samples_file {samples_name!r} must be a file name inside the run dir")
    samples_path = run_dir / samples_name
    if not samples_path.is_file():  # then nothing backs its figures
        raise Refused(f"no {samples_name}: the board ranks only runs whose figures their samples confirm")
    samples = read_samples(samples_path)
    if len(samples) != dataset["n"]:
        raise Refused(f"{samples_name} has {len(samples)} samples, spec.dataset.n is {dataset['n']}")
    difference = accuracy_difference(accuracy, grouped_accuracy(samples), "metrics.accuracy")
    if difference:
        raise Refused(f"metrics do not match {samples_name}: {difference}")
    fluent = results["metrics"].get("accuracy_fluent")
    if isinstance(fluent, dict) and "overall" in fluent and all(_fluent_flag(s) is not None for s in samples):
        recomputed = grouped_accuracy({**s, "correct": bool(s["correct"]) and _fluent_flag(s)} for s in samples)
        difference = accuracy_difference(fluent, recomputed, "metrics.accuracy_fluent")
        if difference:
            raise Refused(f"metrics do not match {samples_name}: {difference}")
    relative = run_dir.relative_to(root).as_posix() if root is not None else run_dir.name
    return Entry(relative, results, samples_checked=True)


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under `root` with a results.json, sorted, minus the EXCLUDED_DIRS at the top level."""
    found = set()
    for path in root.rglob("results.json"):
        relative = path.parent.relative_to(root)
        if relative.parts and relative.parts[0] in EXCLUDED_DIRS:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        found.add(path.parent)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def collect(root: Path) -> tuple[list[Entry], list[tuple[str, str]]]:
    """(accepted entries, [(run dir, reason)] refused), both in path order."""
    entries, refused = [], []
    for run_dir in find_run_dirs(root):
        try:
            entries.append(validate_run(run_dir, root))
        except Refused as exc:
            refused.append((run_dir.relative_to(root).as_posix(), str(exc)))
    return entries, refused


# -- formatting ------------------------------------------------------------------------------------------


def fluent_cell(block) -> dict | None:
    """`metrics.accuracy_fluent` as one overall cell: a grouped block (its `overall`) or a cell."""
    if not isinstance(block, dict):
        return None
    cell = block.get("overall", block)
    return cell if isinstance(cell, dict) and isinstance(cell.get("acc"), (int, float)) else None


NOT_DECODING = ("chat_template_sha256", "chat_template_kwargs", "policy")  # beside the settings in spec.generation


def decoding_settings(generation: dict) -> dict:
    return {k: v for k, v in generation.items() if k not in NOT_DECODING}


def is_own_decoding(generation: dict) -> bool:
    """The method declared its own decoding: `policy` says so (runs since the decoding policy was recorded),
    or the settings are not the benchmark's."""
    return generation.get("policy") == "method-declared" or decoding_settings(generation) != BENCHMARK_DECODING


def decoding_label(generation: dict) -> str:
    settings = decoding_settings(generation)
    parts = ["greedy" if not settings.get("do_sample") else "sampled", f"{settings.get('max_new_tokens')} tok"]
    parts += [f"{k}={settings[k]}" for k in sorted(settings) if k not in BENCHMARK_DECODING]
    return ", ".join(parts)


def selection_label(dataset: dict) -> str:
    selection = dataset.get("selection") or {}
    parts = []
    if selection.get("emotions") and list(selection["emotions"]) != list(EMOTIONS):
        parts.append("emotions " + "/".join(selection["emotions"]))
    if selection.get("valences") and list(selection["valences"]) != list(VALENCES):
        parts.append("valences " + "/".join(selection["valences"]))
    if selection.get("limit") is not None:
        parts.append(f"first {selection['limit']} rows, themes interleaved")
    split = dataset.get("split", BENCHMARK_SPLIT)
    return f"full {split} split" if not parts else f"{split} subset: " + ", ".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell_pct(cell: dict | None) -> str:
    return _pct(cell.get("acc") if cell else None)


def _pair(entry: Entry, block: str, name: str) -> str:
    """A group's cell as "fluent / raw" (%), "- / raw" for a run without fluency records."""
    return f"{_cell_pct(entry.fluent_group(block, name))} / {_cell_pct(entry.accuracy[block].get(name))}"


def _ci(cell: dict) -> str:
    return f"{100 * cell['ci95'][0]:.1f}-{100 * cell['ci95'][1]:.1f}"


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def group_slug(group: tuple[str, str]) -> str:
    model, selection = group
    return slug(model if selection == FULL_SPLIT else f"{model}__{selection}", keep="-._") or "run"


def rank_key(entry) -> tuple:
    """The board's order within a table: fluent accuracy, best first; a run without fluency records after
    every run that has them; ties (and runs without fluency records) by raw accuracy, then by name."""
    fluent = entry.fluent
    return (
        fluent is None,
        -fluent["acc"] if fluent else 0.0,
        -entry.accuracy["overall"]["acc"],
        entry.method,
        entry.path,
    )


def grouped(entries: list[Entry]) -> list[tuple[tuple[str, str], list[Entry]]]:
    """Entries by (model, selection): full-split groups first, then subsets, each sorted by name; entries by
    `rank_key` (fluent accuracy, best first; runs without fluency records last)."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    return [
        (key, sorted(groups[key], key=rank_key))
        for key in sorted(groups, key=lambda group: (group[1] != FULL_SPLIT, group))
    ]


def _command(entry: Entry) -> str:
    command = entry.spec.get("command")
    return "sev-bench " + shlex.join(command) if isinstance(command, list) and command else "-"


def _machine(entry: Entry) -> str:
    hardware, software = entry.spec.get("hardware") or {}, entry.spec.get("software") or {}
    device = str(hardware.get("device", "?"))
    if hardware.get("gpu"):
        where = f"{device} ({hardware['gpu']})"
    elif hardware.get("cpu"):
        cores = f", {hardware['cpu_cores']} cores" if hardware.get("cpu_cores") else ""
        where = f"{device} ({hardware['cpu']}{cores})"
    else:
        where = device
    return where + (f", torch {software['torch']}" if software.get("torch") else "")


# -- README.md -------------------------------------------------------------------------------------------

HEADER = """\
<!-- Generated by `sev-bench leaderboard build` from the run dirs below: do not edit by hand (edit
sev_bench/leaderboard.py, or the runs, and rebuild). -->
# sev-bench leaderboard

Emotion-expression accuracy (%) of chat-model control methods on the SEV **test** split: the share of
replies whose scorer-predicted emotion is the target, per valence context of the event (positive /
neutral / negative) and per target emotion, with the 95% Wilson interval after each overall figure. One
table per model (and per subset, when a run covers only part of the split).

**Ranked by fluent accuracy** (`metrics.accuracy_fluent`): a reply counts as a hit only if it expresses the
target emotion *and* passes the fluency gate (no looping, perplexity under the unmodified model within the
bound), so a method cannot win by breaking the text. Raw accuracy (`metrics.accuracy`: the scorer's verdict
alone) stands beside it; per valence and per emotion each cell reads "fluent / raw". "fluent replies" is
the share of replies that pass the gate. The gate takes no side: every reply's perplexity is measured under
the same neutral chat, whatever method made it, against a bound calibrated for each model
(`spec.fluency`). A run without fluency records, or whose records predate that gate (perplexity under its
own method's chat; `sev-bench fluency regate` measures it again), shows "-" for fluent accuracy and ranks
after every run that has them (among themselves, by raw accuracy).

**decoding** is the run's generation settings; *own* marks a method that declared decoding other than the
benchmark's (greedy, {max_new_tokens} new tokens), so its figures are not strictly comparable. The scorer
column gives the scorer id, the first 12 hex digits of its sha256 and its measured agreement with the
paper's GPT-4o-mini judge (`spec.scorer.agreement.agreement`). Also here: [`leaderboard.csv`](leaderboard.csv),
[`index.html`](index.html) (open it from disk: sortable tables, bar charts) and [`plots/`](plots/).
`sev-bench compare A B` gives a paired test between any two runs.

## Notes

- Each folder is one `sev-bench run` output dir, committed as it was written except for two changes:
  `samples.jsonl` here has no `messages` field, because those chats quote the SEV scenarios and events
  verbatim and SEV's licence is unstated (sev-bench never redistributes SEV); and `summary.md` was written
  again from the run's own `results.json` when summaries began to lead with fluent accuracy (the
  change left `results.json` and `samples.jsonl` untouched). Each sample keeps its `id`
  (`skeleton__valence__emotion`), so `sev-bench run` with the same method rebuilds the exact chat; the
  command of each run is listed under its table (as recorded in `spec.command`; a sharded run records the
  shard that finished last).
- `none` asks for no emotion, so its one reply per event is scored against all six targets: its accuracy
  for an emotion is the natural rate (the share of plain replies the scorer gives that emotion), and its
  overall accuracy is at most 1/6, (1 - the share the scorer calls `none`) / 6; exactly 1/6 only under a
  scorer without a `none` label.
- A scorer retrained on another machine can differ in the last bits of its weights (and so in sha256);
  compare runs made with the same scorer sha256 (`sev-bench compare` warns when they differ).
- A run whose `results.json` has a `rescore` block was scored again with `sev-bench rescore` after it
  was generated (its replies and fluency records unchanged); the block names the original scorer and its
  overall accuracy. A `regate` block means `sev-bench fluency regate` measured its fluency again under the
  method-neutral gate (replies and scores unchanged); the block counts the verdicts that changed.
- `ci/` is not part of the board: it holds the baseline of the project's CI accuracy-regression check
  (`sev-bench check`), a small subset of the test split (see `ci/README.md`). `plots/` is written by the
  build.

## How a run gets onto this board

1. **Run it** with `sev-bench run` on the full test split (the default `--split test`, no `--limit`,
   `--emotions` or `--valences`; a subset run is shown in its own table, with the subset named). Any
   registered method works: a built-in, a YAML config (`--method path.yaml`), or a third-party method
   registered through the `sev_bench.methods` entry-point group of an installed package, e.g.

   ```toml
   [project.entry-points."sev_bench.methods"]
   my-method = "my_package.module:MyMethod"   # a sev_bench.methods.base.ControlMethod subclass
   ```

   then `sev-bench run --method my-method --output-dir leaderboards/<model>/<method>-test` (`sev-bench
   methods` lists it once installed). Keep the benchmark's decoding (greedy, {max_new_tokens} new tokens) unless
   the method needs its own; then it is marked *own* here.
2. **Commit the run dir** under `leaderboards/<model>/<name>/`: `results.json` (required; it holds the
   spec and metrics), `samples.jsonl` (required too: the metrics are checked against it) with
   the `messages` field removed, and `run.json` / `summary.md` as written. Nothing else is read, and the
   build never imports the method: a plug-in's package need not be installed where the board is built.
3. **Build**: `sev-bench leaderboard build` (add `--strict` to fail on any refused run). A run dir is
   refused, with a one-line reason in the "Refused" list below and on stderr, when its `results.json`
   - is not valid JSON (`NaN` and `Infinity` are not) or has an unknown `schema_version` (this build reads
     `{schema_version}`);
   - misses a field or breaks a type of `sev_bench/schema/results.schema.json`;
   - was made on another split than `test`, or on SEV files whose sha256 (or commit) is not the pinned
     release's (`sev_bench/data.py`: {sha_list});
   - has no `samples.jsonl`, or states metrics that do not match it (accuracy is recomputed from the samples
     with `sev_bench.metrics.grouped_accuracy`: every `n` and `correct`, and `acc` / `ci95` to 1e-9;
     sample ids unique, `correct` equal to `predicted_emotion == target_emotion`).
4. Open a pull request with the run dir and the rebuilt `README.md`, `leaderboard.csv`, `index.html` and
   `plots/`. A rebuild from the same files gives the same bytes (no clock is read; the PNGs carry no
   timestamp), given the same sev-bench and matplotlib versions.
"""


def readme(entries: list[Entry], refused: list[tuple[str, str]]) -> str:
    sha_list = ", ".join(f"`{SEV_FILES[name].local}` `{sha[:12]}`" for name, sha in sorted(pinned_sha256().items()))
    out = [
        HEADER.replace("{max_new_tokens}", str(DEFAULT_MAX_NEW_TOKENS))
        .replace("{schema_version}", SCHEMA_VERSION)
        .replace("{sha_list}", sha_list)
    ]
    out.append("## Results\n")
    if not entries:
        out.append("No accepted runs yet.\n")
    for group, members in grouped(entries):
        model, selection = group
        group_name = group_slug(group)
        out.append(f"### {model} ({selection})\n")
        out.append(f"![fluent accuracy by valence, {model}](plots/accuracy-by-valence_{group_name}.png)\n")
        head = ["method", "n", "**fluent** (95% CI)", "raw (95% CI)", "fluent replies"]
        head += [*VALENCES, *EMOTIONS, "scorer", "backend", "decoding", "date", "config"]
        out.append("| " + " | ".join(head) + " |")
        out.append(
            "| --- | " + " | ".join("---:" for _ in range(4 + len(VALENCES) + len(EMOTIONS))) + " |" + " --- |" * 5
        )
        for entry in members:
            accuracy = entry.accuracy
            overall, fluent = accuracy["overall"], entry.fluent
            agreement = entry.scorer_agreement
            scorer = f"`{entry.spec['scorer']['id']}` `{str(entry.spec['scorer']['sha256'])[:12]}`"
            scorer += f" (agreement {agreement:.3f})" if agreement is not None else " (agreement -)"
            decoding = entry.decoding + (" (*own*)" if entry.own_decoding else "")
            backend = f"{entry.spec['backend']['name']} ({entry.spec['model'].get('dtype', '?')})"
            cells = [
                f"`{entry.method}`",
                str(overall["n"]),
                f"**{_cell_pct(fluent)}** ({_ci(fluent)})" if fluent else "-",
                f"{_cell_pct(overall)} ({_ci(overall)})",
                _pct(entry.fluent_share),
                *(_pair(entry, "by_valence", v) for v in VALENCES),
                *(_pair(entry, "by_emotion", e) for e in EMOTIONS),
                scorer,
                backend,
                decoding,
                entry.date,
                f"`{entry.config_hash}`",
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append("| run dir | command | machine | samples checked | heatmap (raw) |")
        out.append("| --- | --- | --- | --- | --- |")
        for entry in sorted(members, key=lambda e: e.path):
            checked = "yes" if entry.samples_checked else "no (no samples.jsonl)"
            out.append(
                f"| [`{entry.path}`]({entry.path}/) | `{_command(entry)}` | {_machine(entry)} | {checked} | "
                f"[heatmap](plots/heatmap_{entry.slug}.png) |"
            )
        out.append("")
    out.append("## Refused\n")
    if refused:
        out += [f"- `{path}`: {reason}" for path, reason in refused]
    else:
        out.append("None: every run dir under this folder passed validation.")
    return "\n".join(out).rstrip("\n") + "\n"


# -- leaderboard.csv -------------------------------------------------------------------------------------

CSV_COLUMNS = (
    ["model", "selection", "method", "run_dir", "n", "fluent", "fluent_ci_low", "fluent_ci_high"]
    + ["raw", "raw_ci_low", "raw_ci_high", "fluent_share"]
    + [f"fluent_{group}" for group in (*VALENCES, *EMOTIONS)]
    + [f"raw_{group}" for group in (*VALENCES, *EMOTIONS)]
    + ["scorer", "scorer_sha256", "scorer_agreement", "backend", "dtype", "decoding", "own_decoding"]
    + ["date", "config_hash", "samples_checked"]
)


def leaderboard_csv(entries: list[Entry]) -> str:
    """One row per entry, in board order (fluent accuracy first); an empty field where a run has no value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    groups = [("by_valence", v) for v in VALENCES] + [("by_emotion", e) for e in EMOTIONS]
    for (model, selection), members in grouped(entries):
        for entry in members:
            accuracy = entry.accuracy
            overall, fluent = accuracy["overall"], entry.fluent
            fluent_ci = fluent["ci95"] if fluent and fluent.get("ci95") else [None, None]
            writer.writerow(
                [model, selection, entry.method, entry.path, overall["n"]]
                + [_num(fluent["acc"] if fluent else None), _num(fluent_ci[0]), _num(fluent_ci[1])]
                + [_num(overall["acc"]), _num(overall["ci95"][0]), _num(overall["ci95"][1]), _num(entry.fluent_share)]
                + [_num((entry.fluent_group(block, name) or {}).get("acc")) for block, name in groups]
                + [_num((accuracy[block].get(name) or {}).get("acc")) for block, name in groups]
                + [entry.spec["scorer"]["id"], entry.spec["scorer"]["sha256"], _num(entry.scorer_agreement)]
                + [entry.spec["backend"]["name"], entry.spec["model"].get("dtype", ""), entry.decoding]
                + [str(entry.own_decoding).lower(), entry.date, entry.config_hash, str(entry.samples_checked).lower()]
            )
    return buffer.getvalue()


# -- index.html ------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none}th:hover{background:#e6e6e6}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.t,th.t{text-align:left}code{font-size:.95em}.own{color:#b15928;font-weight:bold}
.muted{color:#666;font-size:.9em}svg{display:block;margin:.5em 0}
"""

JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var desc = !th.classList.contains("sorted-desc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(desc ? "sorted-desc" : "sorted-asc");
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute("data-v"), y = b.cells[column].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; }
        else if (isNaN(nx) !== isNaN(ny)) { r = isNaN(nx) ? -1 : 1; }
        else { r = x < y ? -1 : (x > y ? 1 : 0); }
        return desc ? -r : r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

VALENCE_COLOURS = {"positive": "#228833", "neutral": "#888888", "negative": "#cc3311"}


def valence_chart_svg(members: list[Entry]) -> str:
    """Grouped bars (positive / neutral / negative per method), as inline SVG: the solid bar is fluent
    accuracy with its 95% interval whisker, the pale bar behind it raw accuracy (a run without fluency
    records has the pale bar alone, whisker on raw accuracy)."""
    bar, gap, left, top, height = 16, 22, 44, 24, 180
    width = max(560, left + len(members) * (3 * bar + gap) + 10)  # at least the legend's width
    y = lambda acc: top + height * (1 - acc)  # noqa: E731
    parts = [
        f'<svg width="{width}" height="{top + height + 58}" role="img" '
        f'aria-label="fluent and raw accuracy by valence per method" font-size="11" font-family="sans-serif">'
    ]
    for tick in (0, 25, 50, 75, 100):
        ty = y(tick / 100)
        parts.append(f'<line x1="{left}" x2="{width - 6}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{tick}%</text>')
    chance = y(1 / len(EMOTIONS))
    parts.append(
        f'<line x1="{left}" x2="{width - 6}" y1="{chance:.1f}" y2="{chance:.1f}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    for index, entry in enumerate(members):
        x0 = left + gap / 2 + index * (3 * bar + gap)
        for offset, valence in enumerate(VALENCES):
            raw = entry.accuracy["by_valence"].get(valence)
            if not raw:
                continue
            fluent = entry.fluent_group("by_valence", valence)
            x, colour = x0 + offset * bar, VALENCE_COLOURS[valence]
            title = f"{entry.method} {valence}: "
            if fluent:
                title += f"fluent {100 * fluent['acc']:.1f}% (95% CI {_ci(fluent)}), "
            title += f"raw {100 * raw['acc']:.1f}% (95% CI {_ci(raw)}), n={raw['n']}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y(raw["acc"]):.1f}" width="{bar - 2}" height="{height * raw["acc"]:.1f}" '
                f'fill="{colour}" fill-opacity="0.3"><title>{html.escape(title)}</title></rect>'
            )
            shown = fluent or raw
            if fluent:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y(fluent["acc"]):.1f}" width="{bar - 2}" '
                    f'height="{height * fluent["acc"]:.1f}" fill="{colour}"><title>{html.escape(title)}</title></rect>'
                )
            low, high = shown["ci95"]
            cx = x + (bar - 2) / 2
            parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(high):.1f}" y2="{y(low):.1f}" stroke="#222"/>')
        label = html.escape(entry.method if len(entry.method) <= 14 else entry.method[:13] + "…")
        parts.append(f'<text x="{x0 + 1.5 * bar:.1f}" y="{top + height + 16}" text-anchor="middle">{label}</text>')
    legend_y = top + height + 38
    for offset, valence in enumerate(VALENCES):
        lx = left + offset * 90
        parts.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{VALENCE_COLOURS[valence]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{legend_y}">{valence}</text>')
    parts.append(f'<text x="{left + 280}" y="{legend_y}" fill="#666">solid: fluent, pale: raw; dashed: 1/6</text>')
    parts.append("</svg>")
    return "".join(parts)


def _td(text: str, value=None, cls: str = "") -> str:
    value = text if value is None else value
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{html.escape(str(value), quote=True)}">{text}</td>'


HTML_TEXT_COLUMNS = {"method", "fluent 95% CI", "raw 95% CI", "scorer", "backend", "decoding", "date", "config"}
HTML_TEXT_COLUMNS.add("run dir")


def _th(name: str) -> str:
    """A header cell: text columns left-aligned; "fluent" marked as the order the rows come in."""
    classes = (["t"] if name in HTML_TEXT_COLUMNS else []) + (["sorted-desc"] if name == "fluent" else [])
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<th{attr}>{name}</th>"


def index_html(entries: list[Entry], refused: list[tuple[str, str]]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sev-bench leaderboard</title>",
        f"<style>{CSS.strip()}</style></head><body>",
        "<h1>sev-bench leaderboard</h1>",
        "<p>Emotion-expression accuracy (%) on the SEV test split, <b>ranked by fluent accuracy</b> (a hit "
        "counts only if the reply also passes the fluency gate), raw accuracy (the scorer's verdict alone) "
        "beside it, each with its 95% Wilson interval; per valence and emotion a cell reads "
        "&quot;fluent / raw&quot;. A run without fluency records shows &quot;-&quot; and ranks last. Click a "
        "column header to sort. Generated by <code>sev-bench leaderboard build</code>; the submission guide is "
        "in <code>README.md</code>.</p>",
    ]
    if not entries:
        out.append("<p>No accepted runs yet.</p>")
    for group, members in grouped(entries):
        model, selection = group
        out.append(f'<h2>{html.escape(model)} <span class="muted">({html.escape(selection)})</span></h2>')
        out.append(valence_chart_svg(members))
        head = ["method", "n", "fluent", "fluent 95% CI", "raw", "raw 95% CI", "fluent replies"]
        head += [*VALENCES, *EMOTIONS, "scorer", "agreement", "backend", "decoding", "date", "config", "run dir"]
        out.append('<table class="sortable"><thead><tr>')
        out.append("".join(_th(h) for h in head))
        out.append("</tr></thead><tbody>")
        for entry in members:
            accuracy = entry.accuracy
            overall, fluent = accuracy["overall"], entry.fluent

            def pair(block: str, name: str, entry=entry):
                cell = entry.fluent_group(block, name)
                return _td(html.escape(_pair(entry, block, name)), "" if cell is None else f"{cell['acc']:.6f}")

            agreement, share = entry.scorer_agreement, entry.fluent_share
            decoding = html.escape(entry.decoding) + (' <span class="own">own</span>' if entry.own_decoding else "")
            cells = [
                _td(f"<code>{html.escape(entry.method)}</code>", entry.method, "t"),
                _td(str(overall["n"])),
                _td(f"<b>{_cell_pct(fluent)}</b>", f"{fluent['acc']:.6f}") if fluent else _td("-", ""),
                _td(_ci(fluent), f"{fluent['ci95'][0]:.6f}", "t") if fluent else _td("-", "", "t"),
                _td(_pct(overall["acc"]), f"{overall['acc']:.6f}"),
                _td(_ci(overall), f"{overall['ci95'][0]:.6f}", "t"),
                _td(_pct(share), "" if share is None else f"{share:.6f}"),
                *(pair("by_valence", v) for v in VALENCES),
                *(pair("by_emotion", e) for e in EMOTIONS),
                _td(
                    f"<code>{html.escape(str(entry.spec['scorer']['id']))}</code> "
                    f'<span class="muted">{html.escape(str(entry.spec["scorer"]["sha256"])[:12])}</span>',
                    entry.spec["scorer"]["id"],
                    "t",
                ),
                _td("-" if agreement is None else f"{agreement:.3f}", "" if agreement is None else f"{agreement:.6f}"),
                _td(
                    html.escape(f"{entry.spec['backend']['name']} ({entry.spec['model'].get('dtype', '?')})"),
                    entry.spec["backend"]["name"],
                    "t",
                ),
                _td(decoding, entry.decoding, "t"),
                _td(entry.date, cls="t"),
                _td(f"<code>{html.escape(entry.config_hash)}</code>", entry.config_hash, "t"),
                _td(f'<a href="{html.escape(entry.path)}/">{html.escape(entry.path)}</a>', entry.path, "t"),
            ]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
    if refused:
        out.append("<h2>Refused</h2><ul>")
        out += [f"<li><code>{html.escape(path)}</code>: {html.escape(reason)}</li>" for path, reason in refused]
        out.append("</ul>")
    out.append(f"<script>{JS.strip()}</script>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# -- build -----------------------------------------------------------------------------------------------


def build(root: str | Path = "leaderboards") -> tuple[list[Entry], list[tuple[str, str]], list[Path]]:
    """Validate every run dir under `root` and write README.md, leaderboard.csv, index.html and plots/.
    Returns (entries, refused, files written)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such leaderboard folder")
    entries, refused = collect(root)
    written = []
    for name, text in (
        ("README.md", readme(entries, refused)),
        ("leaderboard.csv", leaderboard_csv(entries)),
        ("index.html", index_html(entries, refused)),
    ):
        write_text_atomic(root / name, text)
        written.append(root / name)
    written += write_plots(entries, root / "plots")
    return entries, refused, written


def write_plots(entries: list[Entry], plots_dir: Path) -> list[Path]:
    """Per model group the accuracy-by-valence bars, per run the emotion x valence heatmap; PNGs of runs
    that are no longer on the board are removed."""
    from .plots import accuracy_by_valence_figure, heatmap_figure, write_png

    written = []
    for group, members in grouped(entries):
        model, selection = group
        # fluent accuracy, the board's headline; a run without fluency records shows its raw accuracy, so labelled
        runs = [
            (entry.method, entry.fluent_accuracy)
            if entry.fluent_accuracy
            else (f"{entry.method} (raw)", entry.accuracy)
            for entry in members
        ]
        figure = accuracy_by_valence_figure(runs, f"{model} ({selection}): fluent accuracy by valence")
        written.append(write_png(figure, plots_dir / f"accuracy-by-valence_{group_slug(group)}.png"))
        for entry in members:
            title = f"{entry.method} on {model}: raw accuracy (%)"
            written.append(write_png(heatmap_figure(entry.accuracy, title), plots_dir / f"heatmap_{entry.slug}.png"))
    if plots_dir.is_dir():
        keep = {path.name for path in written}
        for stale in sorted(plots_dir.glob("*.png")):
            if stale.name not in keep:
                stale.unlink()
    return written
