"""`sev-bench` command line: argument parsing and calls into the library, nothing else.

One module per group of commands, each with its `add_parsers(commands)` and its `COMMANDS` (name -> function
taking the parsed arguments): `run` (run, data, methods), `scorers` (scorers, scorer, score, rescore,
fluency), `reports` (leaderboard, compare, check) and `discovery` (discover, tune); `common` holds what
they share. The console script is `sev_bench.cli:main`.
"""

from __future__ import annotations

import argparse
import sys

from ..distributed import detect_launch
from ..errors import UserError
from . import discovery, reports, run, scorers
from .common import Parser

COMMANDS = {**run.COMMANDS, **scorers.COMMANDS, **reports.COMMANDS, **discovery.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sev-bench", description="Benchmark emotion control of chat LLMs on SEV.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (run, scorers, reports, discovery):  # in this order in `sev-bench --help`
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command != "run" and detect_launch() is not None:
            raise UserError(f"only `sev-bench run` splits across launched processes; run `{args.command}` once")
        status = COMMANDS[args.command](args)
    except UserError as exc:
        print(f"sev-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sev-bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
