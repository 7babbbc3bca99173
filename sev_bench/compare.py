"""`sev-bench compare A B`: a paired comparison of two runs on the samples both share (by id).

Two kinds of hit are compared, each with the tests below: **fluent hits** first (the board's headline: the
reply names the target emotion *and* passes the fluency gate, `fluency.fluent`), then **raw hits** (the
scorer's verdict alone, `correct`). Fluent hits are compared only when every shared sample of both runs has
a fluency record; otherwise the report says which run lacks them.

- McNemar's exact test (a two-sided binomial test on the discordant pairs: b = A right and B wrong,
  c = A wrong and B right, p = binomtest(b, b + c, 0.5)), overall, per valence and per emotion.
- The accuracy delta B - A with a paired bootstrap 95% interval (resampling the shared samples with
  replacement, seeded, percentile interval).
- Warnings when the runs differ in scorer (id or sha256), decoding, backend or dataset sha256.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .leaderboard.entry import decoding_settings
from .prompts import EMOTIONS, VALENCES
from .results import load_results


@dataclass
class LoadedRun:
    label: str
    results: dict
    samples: dict[str, dict]  # id -> sample


def load_run(path: str | Path) -> LoadedRun:
    """A run dir, its results.json or its samples file -> results and samples (samples are required)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    run_dir = path if path.is_dir() else path.parent
    results = load_results(run_dir)
    samples_path = (
        path
        if path.is_file() and path.suffix == ".jsonl"
        else run_dir / str(results.get("samples_file", "samples.jsonl"))
    )
    if not samples_path.is_file():
        raise UserError(f"{samples_path}: no samples file (a paired comparison needs the per-sample results)")
    samples: dict[str, dict] = {}
    with open(samples_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sample_id = record["id"]
                bool(record["correct"]), record["valence"], record["target_emotion"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{samples_path} line {number}: not a sample record (id, valence, correct)") from None
            if sample_id in samples:
                raise UserError(f"{samples_path} line {number}: sample id {sample_id!r} is there twice")
            samples[sample_id] = record
    spec = results["spec"]
    return LoadedRun(f"{spec['method']['name']} on {spec['model']['id']} ({run_dir})", results, samples)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # heavy (about a second); only `compare` needs it

    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(a, b, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of mean(b) - mean(a) over paired resamples of the same items."""
    import numpy as np  # heavy for the CLI's start-up; only `compare` needs it

    difference = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(difference)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounds memory at about 16 MB of indices
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = difference[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def raw_hit(sample: dict) -> bool:
    return bool(sample["correct"])


def fluent_hit(sample: dict) -> bool:
    """A hit that is also fluent (`fluency.fluent`); the caller checks that the record exists."""
    return bool(sample["correct"]) and bool(sample["fluency"]["fluent"])


def has_fluency(sample: dict) -> bool:
    fluency = sample.get("fluency")
    return isinstance(fluency, dict) and "fluent" in fluency


def paired_rows(
    run_a: LoadedRun, run_b: LoadedRun, resamples: int = 2000, seed: int = 0, hit: Callable[[dict], bool] = raw_hit
) -> list[dict]:
    """One row per group (overall, each valence, each emotion) of the shared samples; `hit` says what counts
    as a success (`raw_hit`, or `fluent_hit`)."""
    shared = sorted(set(run_a.samples) & set(run_b.samples))
    groups = [("overall", "all", lambda s: True)]
    groups += [("valence", v, lambda s, v=v: s["valence"] == v) for v in VALENCES]
    groups += [("emotion", e, lambda s, e=e: s["target_emotion"] == e) for e in EMOTIONS]
    rows = []
    for index, (kind, name, keep) in enumerate(groups):
        ids = [i for i in shared if keep(run_a.samples[i])]
        if not ids:
            continue
        a = [hit(run_a.samples[i]) for i in ids]
        b = [hit(run_b.samples[i]) for i in ids]
        only_a = sum(x and not y for x, y in zip(a, b))
        only_b = sum(y and not x for x, y in zip(a, b))
        low, high = paired_bootstrap(a, b, resamples, seed + index)
        rows.append(
            {
                "kind": kind,
                "group": name,
                "n": len(ids),
                "acc_a": sum(a) / len(ids),
                "acc_b": sum(b) / len(ids),
                "delta": (sum(b) - sum(a)) / len(ids),
                "delta_ci95": [low, high],
                "a_only": only_a,
                "b_only": only_b,
                "p_mcnemar": mcnemar_exact(only_a, only_b),
            }
        )
    return rows


def _gate(spec: dict) -> str:
    """A run's fluency gate in words: the chat its perplexities were measured under and the bound."""
    gate = spec.get("fluency")
    if not gate:
        return "perplexity under each method's own chat (before the method-neutral gate)"
    return f"neutral chat, max perplexity {gate['max_perplexity']}"


def warnings_for(a: dict, b: dict) -> list[str]:
    """What differs between two runs' specs beyond the method (each makes the comparison less clean)."""
    sa, sb = a["spec"], b["spec"]
    found = []
    if sa["scorer"]["id"] != sb["scorer"]["id"]:
        found.append(f"scorers differ: {sa['scorer']['id']} vs {sb['scorer']['id']} (accuracies are not comparable)")
    elif sa["scorer"]["sha256"] != sb["scorer"]["sha256"]:
        found.append(
            f"scorer {sa['scorer']['id']} differs in sha256: {str(sa['scorer']['sha256'])[:12]} vs "
            f"{str(sb['scorer']['sha256'])[:12]} (retrained weights)"
        )
    decoding_a, decoding_b = (decoding_settings(spec["generation"]) for spec in (sa, sb))
    if decoding_a != decoding_b:
        da, db = (json.dumps(decoding, sort_keys=True) for decoding in (decoding_a, decoding_b))
        found.append(f"decoding differs: {da} vs {db}")
    kwargs_a, kwargs_b = (spec["generation"].get("chat_template_kwargs") for spec in (sa, sb))
    if kwargs_a != kwargs_b:
        found.append(f"chat template inputs differ: {json.dumps(kwargs_a)} vs {json.dumps(kwargs_b)}")
    backend_a, backend_b = sa["backend"].get("name"), sb["backend"].get("name")
    if backend_a != backend_b:
        found.append(f"backends differ: {backend_a} vs {backend_b}")
    gate_a, gate_b = (_gate(spec) for spec in (sa, sb))
    if gate_a != gate_b:
        found.append(f"fluency gates differ: {gate_a} vs {gate_b} (fluent hits are not comparable; regate both)")
    if sa["dataset"].get("sha256") != sb["dataset"].get("sha256"):
        found.append("dataset sha256 differs (different SEV files)")
    if sa["dataset"].get("split") != sb["dataset"].get("split"):
        found.append(f"splits differ: {sa['dataset'].get('split')} vs {sb['dataset'].get('split')}")
    return found


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _p(value: float) -> str:
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def compare(path_a: str | Path, path_b: str | Path, resamples: int = 2000, seed: int = 0) -> dict:
    if resamples < 100:
        raise UserError("--resamples must be >= 100")
    run_a, run_b = load_run(path_a), load_run(path_b)
    shared = set(run_a.samples) & set(run_b.samples)
    if not shared:
        raise UserError("the two runs share no sample ids; nothing to compare")
    for sample_id in sorted(shared):
        sa, sb = run_a.samples[sample_id], run_b.samples[sample_id]
        if (sa["valence"], sa["target_emotion"]) != (sb["valence"], sb["target_emotion"]):
            raise UserError(f"sample {sample_id!r} has different valence/target in the two runs")
    lacking = [
        name for name, run in (("A", run_a), ("B", run_b)) if not all(has_fluency(run.samples[i]) for i in shared)
    ]
    return {
        "a": run_a.label,
        "b": run_b.label,
        "n_a": len(run_a.samples),
        "n_b": len(run_b.samples),
        "n_shared": len(shared),
        "resamples": resamples,
        "seed": seed,
        "warnings": warnings_for(run_a.results, run_b.results),
        "rows": paired_rows(run_a, run_b, resamples, seed),
        # None when a run has no fluency records ("fluent_missing" names it)
        "rows_fluent": None if lacking else paired_rows(run_a, run_b, resamples, seed, fluent_hit),
        "fluent_missing": lacking,
    }


def _tables(rows: list[dict], what: str) -> list[str]:
    lines = []
    for kind, title in (("overall", "overall and per valence"), ("emotion", "per target emotion")):
        lines += [
            "",
            f"## {what}: {title}",
            "",
            "| group | n | A (%) | B (%) | delta | 95% interval | A only | B only | McNemar p |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for row in rows:
            if (kind == "overall") != (row["kind"] in ("overall", "valence")):
                continue
            low, high = row["delta_ci95"]
            lines.append(
                f"| {row['group']} | {row['n']} | {_pct(row['acc_a'])} | {_pct(row['acc_b'])} | "
                f"**{_signed(row['delta'])}** | {_signed(low)} to {_signed(high)} | {row['a_only']} | "
                f"{row['b_only']} | {_p(row['p_mcnemar'])} |"
            )
    return lines


def compare_markdown(report: dict) -> str:
    lines = [
        "# sev-bench compare",
        "",
        f"- A: {report['a']}",
        f"- B: {report['b']}",
        f"- paired on {report['n_shared']} shared samples (A has {report['n_a']}, B has {report['n_b']})",
        "- fluent hits (the reply names the target emotion and passes the fluency gate) come first, raw hits "
        "(the scorer's verdict alone) after them",
        f"- delta = B - A in accuracy points; 95% interval from a paired bootstrap ({report['resamples']} "
        f"resamples, seed {report['seed']}); McNemar exact test on the discordant pairs "
        "(A only = A right and B wrong, B only = the reverse), two-sided",
    ]
    for warning in report["warnings"]:
        lines.append(f"- **warning**: {warning}")
    if report.get("rows_fluent") is not None:
        lines += _tables(report["rows_fluent"], "Fluent hits")
    else:
        missing = report.get("fluent_missing") or ["a run"]
        verb = "have" if len(missing) > 1 else "has"
        lines += ["", "## Fluent hits", ""]
        lines.append(f"- not compared: {' and '.join(missing)} {verb} no fluency records (`fluency.fluent`)")
    lines += _tables(report["rows"], "Raw hits")
    return "\n".join(lines) + "\n"
