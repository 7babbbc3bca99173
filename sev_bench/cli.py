"""`sev-bench` command line: argument parsing and calls into the library, nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="folder with the SEV files (sev.jsonl, test_set.jsonl, reference_generations/); "
        "default: $SEV_BENCH_DATA_DIR, else download the pinned release into the cache",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sev-bench", description="Benchmark emotion control of chat LLMs on SEV.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="generate with a control method, score, write a run dir")
    run.add_argument("--method", default="prompting", help="method name (methods/NAME.yaml) or a .yaml path")
    run.add_argument("--model", default="smollm2-135m", help="alias, local dir, GGUF file or hub id")
    run.add_argument("--split", default="test", help="train, dev or test (default: test)")
    run.add_argument(
        "--limit", type=int, help="only the first N rows, themes interleaved (144 = one skeleton per theme)"
    )
    run.add_argument("--emotions", nargs="+", metavar="E", help="target emotions (default: all six)")
    run.add_argument("--valences", nargs="+", metavar="V", help="valences (default: all three)")
    run.add_argument("--batch-size", type=int, default=16, help="halves automatically on out-of-memory")
    run.add_argument("--scorer", default="minilm-probe", help="emotion scorer (see `sev-bench scorers`)")
    run.add_argument("--output-dir", help="run dir (default: sev-bench-runs/<method>_<model>_<split>_<hash>)")
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (auto: fp32 on CPU)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method parameter (repeatable)",
    )
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core)")
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="generate only shard I of N (0-based; run N processes on one "
        "--output-dir; the last to end writes results.json)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_dir(run)

    data = commands.add_parser("data", help="the SEV dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    info = data_commands.add_parser("info", help="row counts per split, theme, valence and emotion")
    _add_data_dir(info)
    export = data_commands.add_parser("export", help="save_to_disk + parquet + dataset card, for push_to_hub")
    export.add_argument("dir", help="output folder")
    _add_data_dir(export)

    commands.add_parser("methods", help="list registered methods and method configs")
    commands.add_parser("scorers", help="list registered scorers")

    scorer = commands.add_parser("scorer", help="train or evaluate an emotion scorer")
    scorer_commands = scorer.add_subparsers(dest="scorer_command", required=True, parser_class=_Parser)
    train = scorer_commands.add_parser("train", help="train minilm-probe on the train-split reference replies")
    train.add_argument("--seed", type=int, default=0)
    _add_data_dir(train)
    evaluate = scorer_commands.add_parser("eval", help="agreement with the paper's judge on the test split")
    evaluate.add_argument("--scorer", default="minilm-probe")
    evaluate.add_argument("--json", dest="json_out", help="also write the report as JSON here")
    _add_data_dir(evaluate)

    score = commands.add_parser("score", help="score the texts of any JSONL file")
    score.add_argument("input", help="JSONL with a text field and a target-emotion field")
    score.add_argument("-o", "--output", required=True, help="output JSONL")
    score.add_argument("--scorer", default="minilm-probe")
    score.add_argument("--text-field", default="text")
    score.add_argument("--target-field", default="target_emotion")
    _add_data_dir(score)
    return parser


def cmd_run(args) -> None:
    from .runner import RunRequest, parse_shard, run

    request = RunRequest(
        method=args.method,
        model=args.model,
        split=args.split,
        limit=args.limit,
        emotions=args.emotions,
        valences=args.valences,
        batch_size=args.batch_size,
        scorer=args.scorer,
        output_dir=args.output_dir,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        data_dir=args.data_dir,
        overrides=args.overrides,
        threads=args.threads,
        shard=parse_shard(args.shard),
        progress=not args.no_progress,
    )
    results, run_dir = run(request)
    if results is None:  # a shard whose siblings are still running
        return
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir / 'results.json'}")


def cmd_data(args) -> None:
    from .data import count_table, dataset_fingerprint, export, load_sev

    dataset = load_sev(args.data_dir)
    if args.data_command == "export":
        out = Path(args.dir)
        export(dataset, out, dataset_fingerprint(args.data_dir))
        print(f"wrote {out}/hf_dataset (save_to_disk), {out}/data/*.parquet and {out}/README.md")
        return
    for split, counts in count_table(dataset).items():
        print(f"{split}: {counts['rows']['all']} rows, {counts['rows']['skeletons']} skeletons")
        for column in ("valence", "target_emotion", "theme"):
            print(f"  {column}: " + ", ".join(f"{name} {n}" for name, n in counts[column].items()))


def cmd_methods(args) -> None:
    from .methods import METHODS, available_configs, resolve_method

    configs = available_configs()
    for name in sorted(set(configs) | set(METHODS.names())):
        config = resolve_method(name)
        origin = "config" if name in configs else "plug-in"
        print(f"{name:<14} {config.method.kind:<8} {origin:<8} {config.description}")


def cmd_scorers(args) -> None:
    from .scoring import SCORERS

    for name in SCORERS.names():
        print(f"{name:<16} {SCORERS.get(name).description}")


def cmd_scorer(args) -> None:
    if args.scorer_command == "train":
        from .scoring.agreement import evaluate_agreement, format_agreement
        from .scoring.minilm_probe import MiniLMProbe, train_probe

        path = train_probe(data_dir=args.data_dir, seed=args.seed)
        print(f"trained minilm-probe: {path}")
        print(format_agreement(evaluate_agreement(MiniLMProbe.from_file(path), data_dir=args.data_dir)))
        return
    from .scoring import load_scorer
    from .scoring.agreement import evaluate_agreement, format_agreement

    report = evaluate_agreement(load_scorer(args.scorer, data_dir=args.data_dir), data_dir=args.data_dir)
    print(format_agreement(report))
    if args.json_out:
        from .atomic import write_json_atomic

        write_json_atomic(Path(args.json_out), report)


def cmd_score(args) -> None:
    from .scoring import load_scorer
    from .scoring.files import score_jsonl

    if not Path(args.input).is_file():
        raise UserError(f"{args.input}: no such file")
    summary = score_jsonl(
        load_scorer(args.scorer, data_dir=args.data_dir),
        args.input,
        args.output,
        text_field=args.text_field,
        target_field=args.target_field,
    )
    print(json.dumps(summary))


COMMANDS = {
    "run": cmd_run,
    "data": cmd_data,
    "methods": cmd_methods,
    "scorers": cmd_scorers,
    "scorer": cmd_scorer,
    "score": cmd_score,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except UserError as exc:
        print(f"sev-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sev-bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
