"""The records a run writes: one line of `samples.jsonl` (`SampleRecord`, with its `Score`) and the
`results.json` document (`RunResults`).

Each record's `to_json()` gives the dict that is written, with the keys in the order the files have
always had them. `sample_json` and `results_json` are the one way each file's content is made
(`sev_bench.results.RunDir` writes them); they also take plain dicts, which is what samples read back
from a run dir, and results that `rescore` and `regate` derive from an earlier file, already are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"
SAMPLES_FILE = "samples.jsonl"  # a run dir's samples, named in its results.json
# The scorer's fields of a sample line, in file order; a scorer may add its own after them
# (the judge: `judge_reason`, or `score_error` when it could not score a reply).
SCORE_FIELDS = ("predicted_emotion", "probs", "correct")


@dataclass(frozen=True)
class Score:
    """A scorer's verdict on one reply. `correct` is None for a reply the scorer could not score (a judge
    that kept failing): it is neither a hit nor a miss (`is_scored` is False), and a run does not save it."""

    predicted_emotion: str | None
    probs: dict[str, float]
    correct: bool | None
    extra: dict[str, Any] = field(default_factory=dict)  # scorer-specific fields, in the scorer's order

    @classmethod
    def from_json(cls, data: dict) -> Score:
        """A verdict as `Scorer.score` returns it (or as a sample line holds it)."""
        extra = {key: value for key, value in data.items() if key not in SCORE_FIELDS}
        return cls(data["predicted_emotion"], data["probs"], data["correct"], extra)

    @classmethod
    def unscored(cls, error: str, labels: tuple[str, ...] | list[str] = ()) -> Score:
        """No verdict: the reply could not be scored (all-zero probabilities, the reason in `score_error`)."""
        return cls(None, dict.fromkeys(labels, 0.0), None, {"score_error": error})

    @property
    def is_scored(self) -> bool:
        return self.correct is not None

    def to_json(self) -> dict:
        return {"predicted_emotion": self.predicted_emotion, "probs": self.probs, "correct": self.correct, **self.extra}


@dataclass(frozen=True)
class SampleRecord:
    """One line of `samples.jsonl`: the SEV row, the chat sent, the reply, its score and its fluency."""

    id: str
    skeleton_id: str
    theme: str
    valence: str
    target_emotion: str
    messages: list[dict[str, str]]
    completion: str
    score: Score
    fluency: dict | None

    @classmethod
    def of_row(cls, row: dict, messages: list[dict], completion: str, score: Score, fluency: dict | None):
        """The record of SEV row `row` (a dict with id, skeleton_id, theme, valence, target_emotion)."""
        return cls(
            row["id"],
            row["skeleton_id"],
            row["theme"],
            row["valence"],
            row["target_emotion"],
            messages,
            completion,
            score,
            fluency,
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "skeleton_id": self.skeleton_id,
            "theme": self.theme,
            "valence": self.valence,
            "target_emotion": self.target_emotion,
            "messages": self.messages,
            "completion": self.completion,
            **self.score.to_json(),
            "fluency": self.fluency,
        }


# results.json's own keys, in file order; `RunResults.sections` holds what later steps add after them.
RESULTS_KEYS = ("schema_version", "created", "spec", "metrics", "timings", "samples_file")


@dataclass
class RunResults:
    """The `results.json` document (its schema: `sev_bench/schema/results.schema.json`). `spec` says how the
    replies were made and scored, `metrics` what they score; `sections` are later additions, in order
    (`fluency_backfill` by a rerun that measured fluency, `rescore`, `regate`)."""

    created: str
    spec: dict
    metrics: dict
    timings: dict
    samples_file: str = SAMPLES_FILE
    schema_version: str = SCHEMA_VERSION
    sections: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> RunResults:
        sections = {key: value for key, value in data.items() if key not in RESULTS_KEYS}
        return cls(
            data["created"],
            data["spec"],
            data["metrics"],
            data["timings"],
            data["samples_file"],
            data["schema_version"],
            sections,
        )

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "spec": self.spec,
            "metrics": self.metrics,
            "timings": self.timings,
            "samples_file": self.samples_file,
            **self.sections,
        }


def sample_json(record: SampleRecord | dict) -> dict:
    """What a samples.jsonl line holds for `record` (a dict read from a run dir is written as it is)."""
    return record.to_json() if isinstance(record, SampleRecord) else record


def results_json(results: RunResults | dict) -> dict:
    """What results.json holds for `results` (a dict derived from an earlier file is written as it is)."""
    return results.to_json() if isinstance(results, RunResults) else results
