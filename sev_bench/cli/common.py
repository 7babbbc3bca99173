"""What every `sev-bench` command shares: the parser class, argument types, the flags several commands take
(`--data-dir`, the scorer options) and writing a finished run's plots."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import UserError
from ..plots import write_run_plots


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def finite(text: str) -> float:
    """argparse type: a float, but not nan or inf (no threshold or strength means anything there)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="folder with the SEV files (sev.jsonl, test_set.jsonl, reference_generations/); "
        "default: $SEV_BENCH_DATA_DIR, else download the pinned release into the cache",
    )


def add_scorer_options(parser: argparse.ArgumentParser) -> None:
    """The scorer options' flags (`sev_bench.scoring.options.OPTION_FLAGS` names them in error messages)."""
    group = parser.add_argument_group("scorer options (hf-classifier, judge)")
    group.add_argument("--scorer-model", metavar="ID|DIR", help="hf-classifier: hub id or local model dir")
    group.add_argument("--label-map", metavar="FILE", help="hf-classifier: JSON object model label -> emotion")
    group.add_argument("--judge-url", metavar="URL", help="judge: OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    group.add_argument("--judge-model", metavar="NAME", help="judge: model name the endpoint serves")
    group.add_argument(
        "--judge-api-key-env", metavar="VAR", help="judge: env variable holding the API key (SEV_BENCH_JUDGE_API_KEY)"
    )
    group.add_argument("--judge-concurrency", type=int, metavar="N", help="judge: parallel requests (8)")
    group.add_argument(
        "--judge-max-failure-rate", type=finite, metavar="R", help="judge: fail above this share of failures (0.02)"
    )
    group.add_argument("--judge-timeout", type=finite, metavar="S", help="judge: seconds per request (60)")


def scorer_options(args) -> dict:
    """The scorer options given on the command line (`load_scorer(..., options=...)`)."""
    keys = ("scorer_model", "label_map", "judge_url", "judge_model", "judge_api_key_env", "judge_concurrency")
    keys += ("judge_max_failure_rate", "judge_timeout")
    options = {key: getattr(args, key, None) for key in keys}
    options["model"] = options.pop("scorer_model")
    return {key: value for key, value in options.items() if value is not None}


def write_plots(results: dict, run_dir: Path) -> None:
    """A finished run's plots, with a warning instead of an error when they fail."""
    try:
        paths = write_run_plots(results, run_dir)
    except Exception as exc:  # a finished run stays finished even if a plot fails
        print(f"sev-bench: warning: plots not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    print("plots: " + ", ".join(str(path) for path in paths))
