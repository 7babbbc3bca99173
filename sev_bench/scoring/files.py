"""Score a JSONL file of replies: each object gains `predicted_emotion`, `probs` and `correct`."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text_atomic
from ..data import iter_jsonl
from ..errors import UserError
from ..prompts import EMOTIONS
from .base import Scorer, is_empty_reply

BATCH_SIZE = 256


def _read_rows(path: Path, text_field: str, target_field: str) -> list[dict]:
    """Every row, validated before anything is scored (so a bad line costs no scoring time)."""
    expected = f"one JSON object per line with a string {text_field!r} and {target_field!r} (one of " + (
        ", ".join(EMOTIONS) + ")"
    )
    if not path.exists():
        raise UserError(f"{path}: no such file; expected a JSONL file, {expected}")
    if not path.is_file():
        raise UserError(f"{path} is not a file; expected a JSONL file, {expected}")
    rows = []
    for number, row in iter_jsonl(path, expected):
        where = f"{path}:{number}"
        if not isinstance(row.get(text_field), str):
            problem = "missing field" if text_field not in row else "non-string field"
            raise UserError(f"{where}: {problem} {text_field!r}; expected {expected}")
        if target_field not in row:
            raise UserError(f"{where}: missing field {target_field!r}; expected {expected}")
        if row[target_field] not in EMOTIONS:
            raise UserError(
                f"{where}: {target_field!r} is {row[target_field]!r}; expected one of {', '.join(EMOTIONS)}"
            )
        rows.append(row)
    return rows


def score_jsonl(
    scorer: Scorer,
    in_path: str | Path,
    out_path: str | Path,
    text_field: str = "text",
    target_field: str = "target_emotion",
) -> dict:
    """Score every row of `in_path` and write the rows, each with `predicted_emotion`, `probs` and
    `correct` added, to `out_path` (atomically: an error leaves no partial file). Returns
    `{n, correct, accuracy, failed, empty, scorer, scorer_sha256}` (`empty`: rows whose text is empty or
    whitespace, scored `none`): rows the scorer failed on (`correct` None,
    with a `score_error`) are left out of the accuracy; more than the scorer tolerates (`check_failures`)
    is a `UserError` and writes nothing."""
    in_path, out_path = Path(in_path), Path(out_path)
    rows = _read_rows(in_path, text_field, target_field)
    lines = []
    correct = failed = 0
    for start in range(0, len(rows), BATCH_SIZE):
        batch = rows[start : start + BATCH_SIZE]
        scores = scorer.score([row[text_field] for row in batch], [row[target_field] for row in batch])
        for row, result in zip(batch, scores, strict=True):
            correct += bool(result["correct"])
            failed += result["correct"] is None
            lines.append(json.dumps({**row, **result}, ensure_ascii=False) + "\n")
    scorer.check_failures()  # too many unscorable texts: an error, and no output file
    try:
        write_text_atomic(out_path, "".join(lines))
    except OSError as exc:
        raise UserError(f"{out_path}: cannot write ({exc.strerror}); expected a writable path") from None
    return {
        "n": len(rows),
        "correct": correct,
        "accuracy": round(correct / (len(rows) - failed), 6) if len(rows) > failed else None,
        "failed": failed,
        "empty": sum(is_empty_reply(row[text_field]) for row in rows),
        "scorer": scorer.id,
        "scorer_sha256": scorer.sha256,
    }
