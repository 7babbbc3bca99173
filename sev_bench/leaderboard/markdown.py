"""README.md of the board: the generated header with the submission guide
(`templates/readme_header.md`), then per model (and subset) its table, its run dirs with their commands
and machines, and the refused runs."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..backends.hf import DEFAULT_MAX_NEW_TOKENS
from ..data import SEV_FILES
from ..prompts import EMOTIONS, VALENCES
from ..results import SCHEMA_VERSION
from .cells import cell_pct, ci_text, fluent_raw_pair, pct
from .entry import Entry
from .ordering import group_slug, grouped
from .validation import pinned_sha256

# Its {max_new_tokens}, {schema_version} and {sha_list} are filled in by `readme`.
HEADER = (Path(__file__).parent / "templates" / "readme_header.md").read_text(encoding="utf-8")


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


def readme(entries: list[Entry], refused: list[tuple[str, str]]) -> str:
    """The whole README.md: the header, one table per (model, subset) with its run dirs, the refused runs."""
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
                f"**{cell_pct(fluent)}** ({ci_text(fluent)})" if fluent else "-",
                f"{cell_pct(overall)} ({ci_text(overall)})",
                pct(entry.fluent_share),
                *(fluent_raw_pair(entry, "by_valence", v) for v in VALENCES),
                *(fluent_raw_pair(entry, "by_emotion", e) for e in EMOTIONS),
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
