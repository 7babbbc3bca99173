"""The results.json schema (`sev_bench/schema/results.schema.json`) and its first violation as one line."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema


@lru_cache(maxsize=1)
def results_schema() -> dict:
    return json.loads((Path(__file__).resolve().parent / "schema" / "results.schema.json").read_text("utf-8"))


def _dotted(path) -> str:
    return ".".join(str(part) for part in path)


def schema_problem(results: dict) -> str | None:
    """The first schema violation as one line (missing fields first), or None."""
    validator = jsonschema.Draft202012Validator(results_schema())
    errors = sorted(
        validator.iter_errors(results),
        key=lambda e: (e.validator != "required", [str(p) for p in e.absolute_path], e.message),
    )
    if not errors:
        return None
    error = errors[0]
    where = list(error.absolute_path)
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return f"missing field {_dotted(where + missing[:1])}"
    message = " ".join(error.message.split())
    if len(message) > 120:
        message = message[:117] + "..."
    return f"field {_dotted(where) or '(root)'}: {message}"
