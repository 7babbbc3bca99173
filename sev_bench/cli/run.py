"""`sev-bench run`, `data` and `methods`: a benchmark run, the SEV dataset, the control methods."""

from __future__ import annotations

from pathlib import Path

from ..data import count_table, dataset_fingerprint, load_sev
from ..data import export as export_dataset
from ..defaults import DEFAULT_SCORER
from ..distributed import close_process_group, detect_launch, init_process_group, rank_device
from ..errors import UserError
from ..methods import METHODS, available_configs, resolve_method
from ..runner import RunRequest, parse_shard, run
from ..scoring import load_scorer
from ..scoring.export import SCORER_SUBDIR, export_scorer
from .common import Parser, add_data_dir, add_scorer_options, scorer_options, write_plots


def add_parsers(commands) -> None:
    """`run`, `data info|export` and `methods`."""
    _add_run_command(commands)
    data = commands.add_parser("data", help="the SEV dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    info = data_commands.add_parser("info", help="row counts per split, theme, valence and emotion")
    add_data_dir(info)
    export = data_commands.add_parser("export", help="save_to_disk + parquet + dataset card, for push_to_hub")
    export.add_argument("dir", help="output folder")
    export.add_argument(
        "--with-scorer",
        action="store_true",
        help=f"also write the default scorer ({DEFAULT_SCORER}) into DIR/scorer, the two cards linking each other",
    )
    add_data_dir(export)

    commands.add_parser("methods", help="list registered methods and method configs")


def _add_run_command(commands) -> None:
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
    run.add_argument("--scorer", default=DEFAULT_SCORER, help="emotion scorer (see `sev-bench scorers`)")
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
    run.add_argument(
        "--backend",
        default="hf",
        help="hf (default; every method) or vllm (methods without interventions: none, prompting; needs vLLM)",
    )
    add_scorer_options(run)
    add_data_dir(run)


def cmd_run(args) -> None:
    shard, device, progress = parse_shard(args.shard), args.device, not args.no_progress
    launch = detect_launch()
    if launch is not None:  # torchrun / accelerate launch: this process is one rank, i.e. one shard
        if shard is not None:
            raise UserError(
                f"--shard cannot be combined with a {launch.world_size}-process launch: each rank takes its own "
                "shard; drop --shard"
            )
        shard, device, progress = launch.shard, rank_device(device, launch), progress and launch.is_main
        init_process_group()
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
        device=device,
        data_dir=args.data_dir,
        overrides=args.overrides,
        scorer_options=scorer_options(args),
        threads=args.threads,
        shard=shard,
        backend=args.backend,
        progress=progress,
        distributed=launch is not None,
    )
    try:
        results, run_dir = run(request)
    finally:
        close_process_group()
    if results is None:  # a shard whose siblings are still running, or a rank other than 0
        return
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir / 'results.json'}")
    write_plots(results, run_dir)


def cmd_data(args) -> None:
    dataset = load_sev(args.data_dir)
    if args.data_command == "export":
        out = Path(args.dir)
        scorer = None
        if args.with_scorer:
            if (out / SCORER_SUBDIR).exists():  # before anything is written
                raise UserError(f"{out / SCORER_SUBDIR} exists; choose a new folder for the export")
            scorer = load_scorer(DEFAULT_SCORER, data_dir=args.data_dir)
        export_dataset(dataset, out, dataset_fingerprint(args.data_dir), scorer=scorer)
        print(f"wrote {out}/hf_dataset (save_to_disk), {out}/data/*.parquet and {out}/README.md")
        if scorer is not None:
            export_scorer(scorer, out / SCORER_SUBDIR, dataset_link="../README.md")
            print(f"wrote the scorer {scorer.id} to {out / SCORER_SUBDIR} (a text-classification model dir)")
        return
    for split, counts in count_table(dataset).items():
        print(f"{split}: {counts['rows']['all']} rows, {counts['rows']['skeletons']} skeletons")
        for column in ("valence", "target_emotion", "theme"):
            print(f"  {column}: " + ", ".join(f"{name} {n}" for name, n in counts[column].items()))


def cmd_methods(args) -> None:
    configs = available_configs()
    for name in sorted(set(configs) | set(METHODS.names())):
        config = resolve_method(name)
        origin = "config" if name in configs else "plug-in"
        print(f"{name:<14} {config.method.kind:<8} {origin:<8} {config.description}")
        for line in config.method.describe_params():  # each parameter with its type, default and constraint
            print(f"{'':<16}{line}")


COMMANDS = {"run": cmd_run, "data": cmd_data, "methods": cmd_methods}
