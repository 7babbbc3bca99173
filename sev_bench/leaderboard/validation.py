"""Whether a run dir may go on the board: its results.json is valid (schema, pinned SEV release, test
split) and every figure it states is recomputed from its samples.jsonl. A run that fails is Refused with
a one-line reason."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import PINNED_COMMIT, SEV_FILES
from ..metrics import grouped_accuracy
from ..results import SCHEMA_VERSION, reject_constant
from ..results_schema import schema_problem
from .entry import BENCHMARK_SPLIT, Entry

# Top-level folders of the leaderboard dir that hold no entries: `ci/` is the CI regression baseline (a
# small subset, not a benchmark result), `plots/` is written by the build itself.
EXCLUDED_DIRS = ("ci", "plots")
TOLERANCE = 1e-9  # acc / ci95 recomputed from samples.jsonl must match to this


class Refused(Exception):
    """A run dir that cannot go on the board; the message is one line."""


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
