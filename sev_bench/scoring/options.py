"""Scorer options (`load_scorer(..., options=...)`): the command-line flag that sets each, and the check
that a scorer is given only the options it takes.

The flags live here, not in the CLI, because the library's own error messages name them: a user who typed
`--judge-url` for a scorer without that option reads the flag they typed, whichever way the scorer was
loaded. The CLI defines the flags themselves (`sev_bench.cli.common.add_scorer_options`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError

# Scorer options and the CLI flag that sets each, for error messages.
OPTION_FLAGS: dict[str, str] = {
    "model": "--scorer-model",
    "label_map": "--label-map",
    "judge_url": "--judge-url",
    "judge_model": "--judge-model",
    "judge_api_key_env": "--judge-api-key-env",
    "judge_concurrency": "--judge-concurrency",
    "judge_max_failure_rate": "--judge-max-failure-rate",
    "judge_timeout": "--judge-timeout",
}


def option_flag(key: str) -> str:
    return OPTION_FLAGS.get(key, key)


def check_options(scorer: str, options: dict | None, allowed: Sequence[str]) -> dict:
    """`options` without None values; a key outside `allowed` is a one-line `UserError`."""
    given = {key: value for key, value in (options or {}).items() if value is not None}
    extra = [key for key in given if key not in allowed]
    if extra:
        accepted = ", ".join(option_flag(key) for key in allowed) or "none"
        raise UserError(
            f"{', '.join(option_flag(key) for key in extra)} does not apply to scorer {scorer} "
            f"(its options: {accepted})"
        )
    return given
