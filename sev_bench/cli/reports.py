"""`sev-bench leaderboard build`, `compare` and `check`: published runs, side by side and against a baseline."""

from __future__ import annotations

import sys
from pathlib import Path

from ..atomic import write_text_atomic
from ..check import check, check_markdown
from ..compare import compare, compare_markdown
from ..leaderboard import build as build_leaderboard
from .common import Parser, finite


def add_parsers(commands) -> None:
    """`leaderboard build`, `compare` and `check`."""
    leaderboard = commands.add_parser("leaderboard", help="validate published runs and build the leaderboard")
    board_commands = leaderboard.add_subparsers(dest="leaderboard_command", required=True, parser_class=Parser)
    build_command = board_commands.add_parser("build", help="write README.md, leaderboard.csv, index.html and plots/")
    build_command.add_argument("--dir", default="leaderboards", help="leaderboard folder (default: leaderboards)")
    build_command.add_argument("--strict", action="store_true", help="exit 1 when any run dir is refused")

    compare_command = commands.add_parser(
        "compare", help="paired comparison of two runs, fluent hits then raw hits (McNemar, bootstrap deltas)"
    )
    compare_command.add_argument("a", help="run A: a run dir or its results.json")
    compare_command.add_argument("b", help="run B: a run dir or its results.json")
    compare_command.add_argument(
        "--resamples", type=int, default=2000, help="paired bootstrap resamples (default 2000)"
    )
    compare_command.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare_command.add_argument("-o", "--output", help="also write the markdown report here")

    check_command = commands.add_parser("check", help="fail (exit 1) when accuracy dropped below a baseline's")
    check_command.add_argument("results", help="the run to check: a run dir or its results.json")
    check_command.add_argument("--baseline", required=True, help="the baseline run dir or results.json")
    check_command.add_argument(
        "--tolerance", type=finite, required=True, help="largest allowed drop, absolute in [0, 1] (0.05 = 5 points)"
    )


def cmd_leaderboard(args) -> int:
    entries, refused, written = build_leaderboard(args.dir)
    for path, reason in refused:
        print(f"refused {path}: {reason}", file=sys.stderr)
    print(f"{len(entries)} runs on the board, {len(refused)} refused; wrote {len(written)} files under {args.dir}")
    return 1 if args.strict and refused else 0


def cmd_compare(args) -> None:
    text = compare_markdown(compare(args.a, args.b, resamples=args.resamples, seed=args.seed))
    print(text, end="")
    if args.output:
        write_text_atomic(Path(args.output), text)


def cmd_check(args) -> int:
    report = check(args.results, args.baseline, args.tolerance)
    print(check_markdown(report), end="")
    return 0 if report.passed else 1


COMMANDS = {"leaderboard": cmd_leaderboard, "compare": cmd_compare, "check": cmd_check}
