"""How a scorer behaves on text unlike its training data: the stress sets of `sev-bench scorer eval --stress`.

Steered and circuit-modulated replies are odd by nature (loops, fragments, word salad, flat text), and the
benchmark must not count them as emotion just because the scorer has to pick one of six labels. Every set
comes from the **dev** split (the skeletons held out of scorer training), never from the test split, which
only measures; deterministic for a seed:

- `control`: the dev skeletons' judge-accepted reference replies (up to `per_set`, the same number per
  target emotion): the scorer's hit rate on ordinary text, the yardstick for the next two sets.
- `truncated`: the same replies cut to their first quarter of words (at least 3): fragments.
- `repeated`: each reply's first sentence said over and over to the reply's length: the loops that
  steering produces.
- `neutral`: the dev skeletons' scenario sentences and neutral-valence events, which carry no emotion by
  construction of SEV.
- `off-topic`: emotionless sentences about nothing in SEV (`OFF_TOPIC`, written for this purpose).
- `run:<name>`: the replies of a dev-split benchmark run (`--stress-run DIR`, e.g. a strong steering run),
  split into the replies the fluency gate passed and those it failed; a hit on a non-fluent reply is the
  scorer being fooled by degenerate text (the benchmark's `accuracy_fluent` does not count those,
  `accuracy` does). A run on another split is refused.

Figures per set: `hit_rate` (the scorer's label equals the target, for sets with targets), the
`predicted_share` per label, `mean_top_prob` and `confident` (share with top probability >= 0.5). A scorer
with a `none` label can say "no emotion"; the six-label probe cannot, so on `neutral` and `off-topic` its
confidence is what to watch.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import data
from ..errors import UserError
from ..prompts import EMOTIONS
from .base import Scorer

CONFIDENT = 0.5
WORD_RE = re.compile(r"\S+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# Emotionless sentences on subjects SEV never touches; written for this module.
OFF_TOPIC = (
    "The function returns a sorted list of integers and leaves its input unchanged.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Line 14 of the configuration file sets the timeout to thirty seconds.",
    "The train to the airport leaves every twenty minutes from platform three.",
    "A triangle's interior angles add up to one hundred and eighty degrees.",
    "The library is open from nine to five on weekdays.",
    "Copper conducts electricity better than aluminium of the same thickness.",
    "The meeting notes list four agenda items and two action owners.",
    "Set the oven to 180 degrees and bake the bread for forty minutes.",
    "The river is about six hundred kilometres long and flows north.",
    "Press the blue button to print a copy of the receipt.",
    "The spreadsheet has one column for dates and another for totals.",
    "Mount the shelf with four screws into the wall studs.",
    "The survey asked twelve questions about commuting habits.",
    "Most maple trees lose their leaves in autumn.",
    "The database stores each record with a numeric identifier.",
    "The parcel weighs two kilograms and measures thirty centimetres across.",
    "Rotate the tyres every ten thousand kilometres.",
    "The museum's second floor holds maps from the eighteenth century.",
    "Convert the file to plain text before uploading it.",
    "The bus route was extended by two stops last spring.",
    "The manual describes three ways to reset the router.",
    "A kilometre is one thousand metres.",
    "The invoice lists the items, their quantities and the unit prices.",
    "Sunrise tomorrow is at six forty-two.",
    "The committee meets on the first Tuesday of each month.",
    "Each chapter of the textbook ends with ten exercises.",
    "The paint needs four hours to dry between coats.",
    "The app stores its settings in a file in the home folder.",
    "The highway has three lanes in each direction near the city.",
    "Add the numbers in the first column and divide by their count.",
)


def _sample_per_emotion(rows: list[dict], per_set: int, rng: random.Random) -> list[dict]:
    per_emotion = max(1, per_set // len(EMOTIONS))
    chosen = []
    for emotion in EMOTIONS:
        pool = [row for row in rows if row["emotion"] == emotion]
        chosen += rng.sample(pool, min(per_emotion, len(pool)))
    return chosen


def _truncate(text: str) -> str:
    words = WORD_RE.findall(text)
    return " ".join(words[: max(3, len(words) // 4)])


def _repeat_first_sentence(text: str) -> str:
    first = SENTENCE_END.split(text.strip())[0].strip() or text.strip()
    target_words = len(WORD_RE.findall(text))
    repeated = [first]
    while len(" ".join(repeated).split()) < target_words:
        repeated.append(first)
    return " ".join(repeated)


def _run_replies(run_dir: Path) -> list[dict]:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"--stress-run {run_dir}: no samples.jsonl there (a `sev-bench run` output dir)")
    split = run_split(run_dir)
    if split != "dev":
        raise UserError(
            f"--stress-run {run_dir} is a run on the {split} split; stress sets come from dev-split runs only "
            "(the test split only measures): rerun it with --split dev"
        )
    replies = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
            replies.append(
                {
                    "text": sample["completion"],
                    "target": sample["target_emotion"],
                    "fluent": (sample.get("fluency") or {}).get("fluent"),
                }
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{line_number}: not a sev-bench sample (completion, target_emotion)") from None
    return replies


def run_split(run_dir: Path) -> str:
    """The split a run dir was generated on (from its `run.json`, else `results.json`)."""
    for name in ("run.json", "results.json"):
        try:
            spec = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        spec = spec.get("spec", spec) if isinstance(spec, dict) else {}
        dataset = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
        split = dataset.get("split") or spec.get("split")
        if isinstance(split, str):
            return split
    raise UserError(f"--stress-run {run_dir}: no run.json or results.json saying which split it ran on")


def build_stress_sets(
    data_dir: str | Path | None = None,
    runs: Sequence[str | Path] = (),
    per_set: int = 300,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """The stress sets (see module docstring): name -> items `{"text", "target"}` (target None = no emotion)."""
    rng = random.Random(seed)
    dev_skeletons = data.load_skeletons(data_dir)["dev"]
    dev_ids = {s["skeleton_id"] for s in dev_skeletons}
    accepted = [
        row
        for row in data.load_reference("train", data_dir)  # the dev skeletons' replies live in the train file
        if row["judge"]["match"] == 1 and row["skeleton_id"] in dev_ids
    ]
    control = _sample_per_emotion(accepted, per_set, rng)
    sets = {
        "control": [{"text": row["gen_text"], "target": row["emotion"]} for row in control],
        "truncated": [{"text": _truncate(row["gen_text"]), "target": row["emotion"]} for row in control],
        "repeated": [{"text": _repeat_first_sentence(row["gen_text"]), "target": row["emotion"]} for row in control],
    }
    neutral_texts = []
    for skeleton in dev_skeletons:
        neutral_texts += [skeleton["scenario"], skeleton["event"]["neutral"]]
    neutral_texts = rng.sample(neutral_texts, min(per_set, len(neutral_texts)))
    sets["neutral"] = [{"text": text, "target": None} for text in neutral_texts]
    sets["off-topic"] = [{"text": text, "target": None} for text in OFF_TOPIC]
    for run_dir in map(Path, runs):
        replies = _run_replies(run_dir)
        name = run_dir.name
        groups = ((True, "fluent"), (False, "non-fluent"))
        if all(r["fluent"] is None for r in replies):  # a run made before the fluency guard
            groups = ((None, "no fluency records"),)
        for flag, label in groups:
            chosen = [r for r in replies if r["fluent"] is flag]
            chosen = rng.sample(chosen, min(per_set, len(chosen)))
            sets[f"run:{name} ({label})"] = [{"text": r["text"], "target": r["target"]} for r in chosen]
    return sets


def evaluate_stress(scorer: Scorer, sets: dict[str, list[dict]]) -> dict:
    """The scorer's figures on each stress set (see module docstring)."""
    labels = list(scorer.labels) + [p for p in ("none",) if p not in scorer.labels]  # empty replies are `none`
    report = {"scorer": {"id": scorer.id, "sha256": scorer.sha256, "labels": labels}, "sets": {}}
    for name, items in sets.items():
        if not items:
            report["sets"][name] = {"n": 0}
            continue
        texts = [item["text"] for item in items]
        targets = [item["target"] for item in items]
        if all(target is not None for target in targets):
            scored = scorer.score(texts, targets)  # the judge needs targets; probabilities may be absent
            predicted = [s["predicted_emotion"] for s in scored]
            top = [max(s["probs"].values()) if s.get("probs") else None for s in scored]
            hits = [s["correct"] for s in scored if s["correct"] is not None]
            hit_rate = round(sum(hits) / len(hits), 4) if hits else None
        else:
            probs = scorer.predict_proba(texts)
            predicted = [labels[k] for k in np.argmax(probs, axis=1)]
            top = [float(p) for p in np.max(probs, axis=1)]
            hit_rate = None
        known_top = [t for t in top if t is not None]
        report["sets"][name] = {
            "n": len(items),
            "hit_rate": hit_rate,
            "predicted_share": {label: round(predicted.count(label) / len(predicted), 4) for label in labels},
            "mean_top_prob": round(float(np.mean(known_top)), 4) if known_top else None,
            "confident": round(sum(t >= CONFIDENT for t in known_top) / len(known_top), 4) if known_top else None,
        }
    return report


def format_stress(report: dict) -> str:
    labels = report["scorer"]["labels"]
    lines = [
        f"Stress sets for scorer {report['scorer']['id']} (hit rate: label = target; shares: % of the set "
        f"given each label; confident: top probability >= {CONFIDENT})",
        "",
        "| set | n | hit rate | mean top prob | confident | " + " | ".join(labels) + " |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in labels) + " |",
    ]

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    for name, cell in report["sets"].items():
        if not cell["n"]:
            lines.append(f"| {name} | 0 | - | - | - | " + " | ".join("-" for _ in labels) + " |")
            continue
        shares = " | ".join(pct(cell["predicted_share"][label]) for label in labels)
        top = "-" if cell["mean_top_prob"] is None else f"{cell['mean_top_prob']:.2f}"
        lines.append(
            f"| {name} | {cell['n']} | {pct(cell['hit_rate'])} | {top} | {pct(cell['confident'])} | {shares} |"
        )
    return "\n".join(lines) + "\n"
