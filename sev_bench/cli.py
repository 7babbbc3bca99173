"""`sev-bench` command line: argument parsing and calls into the library, nothing else."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .defaults import DEFAULT_SCORER
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def _finite(text: str) -> float:
    """argparse type: a float, but not nan or inf (no threshold or strength means anything there)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="folder with the SEV files (sev.jsonl, test_set.jsonl, reference_generations/); "
        "default: $SEV_BENCH_DATA_DIR, else download the pinned release into the cache",
    )


def _add_scorer_options(parser: argparse.ArgumentParser) -> None:
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
        "--judge-max-failure-rate", type=_finite, metavar="R", help="judge: fail above this share of failures (0.02)"
    )
    group.add_argument("--judge-timeout", type=_finite, metavar="S", help="judge: seconds per request (60)")


def _scorer_options(args) -> dict:
    """The scorer options given on the command line (`load_scorer(..., options=...)`)."""
    keys = ("scorer_model", "label_map", "judge_url", "judge_model", "judge_api_key_env", "judge_concurrency")
    keys += ("judge_max_failure_rate", "judge_timeout")
    options = {key: getattr(args, key, None) for key in keys}
    options["model"] = options.pop("scorer_model")
    return {key: value for key, value in options.items() if value is not None}


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
    _add_scorer_options(run)
    _add_data_dir(run)

    data = commands.add_parser("data", help="the SEV dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    info = data_commands.add_parser("info", help="row counts per split, theme, valence and emotion")
    _add_data_dir(info)
    export = data_commands.add_parser("export", help="save_to_disk + parquet + dataset card, for push_to_hub")
    export.add_argument("dir", help="output folder")
    export.add_argument(
        "--with-scorer",
        action="store_true",
        help=f"also write the default scorer ({DEFAULT_SCORER}) into DIR/scorer, the two cards linking each other",
    )
    _add_data_dir(export)

    commands.add_parser("methods", help="list registered methods and method configs")
    commands.add_parser("scorers", help="list registered scorers")

    scorer = commands.add_parser("scorer", help="train or evaluate an emotion scorer")
    scorer_commands = scorer.add_subparsers(dest="scorer_command", required=True, parser_class=_Parser)
    train = scorer_commands.add_parser(
        "train", help="(re)train a built-in scorer (minilm-emotions, minilm-finetuned, minilm-probe) and measure it"
    )
    train.add_argument("--scorer", default=DEFAULT_SCORER, help="minilm-emotions, minilm-finetuned or minilm-probe")
    train.add_argument("--seed", type=int, default=0)
    _add_data_dir(train)
    evaluate = scorer_commands.add_parser(
        "eval",
        help="agreement with the paper's judge (test-split reference replies), GoEmotions test, plain statements, "
        "and stress sets (dev split)",
    )
    evaluate.add_argument("--scorer", default=DEFAULT_SCORER)
    evaluate.add_argument("--json", dest="json_out", help="also write the report as JSON here")
    evaluate.add_argument("--output-dir", help="write report.md, one JSON per measurement and the confusion PNGs here")
    evaluate.add_argument(
        "--no-heldout", action="store_true", help="skip the GoEmotions test split and the plain statements"
    )
    evaluate.add_argument(
        "--stress",
        action="store_true",
        help="also score the stress sets (dev split: control, truncated, repeated, neutral, off-topic)",
    )
    evaluate.add_argument(
        "--stress-run",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a dev-split run's replies as a stress set, split by the fluency gate (repeatable; implies --stress)",
    )
    _add_scorer_options(evaluate)
    _add_data_dir(evaluate)

    export_scorer = scorer_commands.add_parser(
        "export", help="write the scorer as a standard Hugging Face text-classification dir with a model card"
    )
    export_scorer.add_argument("dir", help="output folder (new or empty)")
    export_scorer.add_argument("--scorer", default=DEFAULT_SCORER)
    _add_data_dir(export_scorer)

    score = commands.add_parser("score", help="score the texts of any JSONL file")
    score.add_argument("input", help="JSONL with a text field and a target-emotion field")
    score.add_argument("-o", "--output", required=True, help="output JSONL")
    score.add_argument("--scorer", default=DEFAULT_SCORER)
    score.add_argument("--text-field", default="text")
    score.add_argument("--target-field", default="target_emotion")
    _add_scorer_options(score)
    _add_data_dir(score)

    fluency = commands.add_parser("fluency", help="the fluency gate: calibrate a model's bound, regate a run")
    fluency_commands = fluency.add_subparsers(dest="fluency_command", required=True)
    calibrate = fluency_commands.add_parser(
        "calibrate", help="measure a model's perplexity bound from its finished `none` run on the dev split"
    )
    calibrate.add_argument("run_dir", help="a finished `none` run on dev (its model is the one calibrated)")
    calibrate.add_argument("--out-dir", help="where the calibration file goes (default: the package's)")
    calibrate.add_argument("--threads", type=int, help="CPU threads for torch")
    _add_data_dir(calibrate)
    regate = fluency_commands.add_parser(
        "regate", help="redraw a finished run's fluency verdicts under today's gate (a new run dir)"
    )
    regate.add_argument("run_dir", help="a finished run's output dir")
    regate.add_argument("--output-dir", required=True, help="where the regated run goes")
    regate.add_argument("--threads", type=int, help="CPU threads for torch")
    _add_data_dir(regate)

    rescore = commands.add_parser("rescore", help="score a finished run's saved replies again with another scorer")
    rescore.add_argument("run_dir", help="a finished run's output dir")
    rescore.add_argument("--scorer", required=True, help="the scorer to apply (see `sev-bench scorers`)")
    rescore.add_argument("--output-dir", help="where the rescored run goes (default: RUN_DIR-<scorer>)")
    rescore.add_argument("--no-progress", action="store_true")
    _add_scorer_options(rescore)
    _add_data_dir(rescore)
    _add_report_commands(commands)
    _add_discovery_commands(commands)
    _add_tune_command(commands)
    return parser


def cmd_run(args) -> None:
    from .distributed import close_process_group, detect_launch, init_process_group, rank_device
    from .runner import RunRequest, parse_shard, run

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
        scorer_options=_scorer_options(args),
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
    _write_run_plots(results, run_dir)


def cmd_data(args) -> None:
    from .data import count_table, dataset_fingerprint, export, load_sev

    dataset = load_sev(args.data_dir)
    if args.data_command == "export":
        out = Path(args.dir)
        scorer = None
        if args.with_scorer:
            from .scoring import load_scorer
            from .scoring.export import SCORER_SUBDIR, export_scorer

            if (out / SCORER_SUBDIR).exists():  # before anything is written
                raise UserError(f"{out / SCORER_SUBDIR} exists; choose a new folder for the export")
            scorer = load_scorer(DEFAULT_SCORER, data_dir=args.data_dir)
        export(dataset, out, dataset_fingerprint(args.data_dir), scorer=scorer)
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
    from .methods import METHODS, available_configs, resolve_method

    configs = available_configs()
    for name in sorted(set(configs) | set(METHODS.names())):
        config = resolve_method(name)
        origin = "config" if name in configs else "plug-in"
        print(f"{name:<14} {config.method.kind:<8} {origin:<8} {config.description}")
        for line in config.method.describe_params():  # each parameter with its type, default and constraint
            print(f"{'':<16}{line}")


def cmd_rescore(args) -> None:
    from .rescore import rescore
    from .scoring import SCORERS, load_scorer

    if not (Path(args.run_dir) / "results.json").is_file():  # before the scorer loads: a typo fails at once
        raise UserError(f"{args.run_dir}: no results.json; rescore works on finished runs")
    SCORERS.get(args.scorer)
    scorer = load_scorer(args.scorer, data_dir=args.data_dir, options=_scorer_options(args))
    results, out = rescore(args.run_dir, scorer, args.output_dir, progress=not args.no_progress)
    before = results["rescore"]["from_accuracy_overall"]["acc"]
    after = results["metrics"]["accuracy"]["overall"]["acc"]
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(
        f"overall accuracy {100 * before:.1f}% with {results['rescore']['from_scorer']['id']} -> "
        f"{100 * after:.1f}% with {scorer.id}"
    )
    print(f"results: {out / 'results.json'}")
    _write_run_plots(results, out)


def cmd_fluency(args) -> None:
    if args.fluency_command == "calibrate":
        from .fluency_calibration import calibrate, none_dev_model, write_calibration
        from .models import load_model

        run_dir = Path(args.run_dir)
        model = none_dev_model(run_dir)  # a wrong run fails before the model loads
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        loaded = load_model(model["id"], dtype=model["dtype"], device="cpu")
        record = calibrate(loaded, run_dir, {"id": model["id"], "revision": loaded.revision}, args.data_dir)
        path = write_calibration(record, Path(args.out_dir) if args.out_dir else None)
        print(json.dumps({k: record[k] for k in ("max_perplexity", "counts", "perplexity", "below_bound")}, indent=1))
        print(f"fluency bound for {model['id']}: {record['max_perplexity']} -> {path}")
        return
    from .regate import regate_run

    results, out = regate_run(args.run_dir, args.output_dir, args.data_dir, threads=args.threads)
    block = results["regate"]
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(
        f"fluent share {block['from_fluent_share']} -> {results['metrics']['fluency']['fluent_share']}; "
        f"{block['verdicts_changed']} verdicts changed ({block['fluent_to_not']} fluent -> not, "
        f"{block['not_to_fluent']} not -> fluent); results: {out / 'results.json'}"
    )


def cmd_scorers(args) -> None:
    from .scoring import SCORERS

    for name in SCORERS.names():
        print(f"{name:<16} {SCORERS.get(name).description}")


def cmd_scorer(args) -> None:
    from .scoring import load_scorer
    from .scoring.evaluation import evaluate_scorer, format_report

    if args.scorer_command == "export":
        from .scoring import SCORERS
        from .scoring.export import export_scorer

        SCORERS.get(args.scorer)  # an unknown name fails before anything loads
        if Path(args.dir).exists() and any(Path(args.dir).iterdir()):
            raise UserError(f"{args.dir} exists and is not empty; choose a new folder for the export")
        out = export_scorer(load_scorer(args.scorer, data_dir=args.data_dir), args.dir)
        print(f"wrote {out}: load it with transformers.pipeline('text-classification', model='{out}', top_k=None)")
        return
    if args.scorer_command == "train":
        from .scoring import SCORERS

        trainers = _scorer_trainers()
        if args.scorer not in trainers:
            raise UserError(f"--scorer {args.scorer} is not trained by sev-bench; trainable: {', '.join(trainers)}")
        path = trainers[args.scorer](args)
        trained = SCORERS.get(args.scorer).load(data_dir=args.data_dir)
        print(f"trained {args.scorer}: {path}")
        print(format_report(evaluate_scorer(trained, data_dir=args.data_dir)))
        return
    from .atomic import write_json_atomic, write_text_atomic

    for run_dir in args.stress_run:  # before the scorer loads: a typo fails at once
        if not (Path(run_dir) / "samples.jsonl").is_file():
            raise UserError(f"--stress-run {run_dir}: no samples.jsonl there (a `sev-bench run` output dir)")
    scorer = load_scorer(args.scorer, data_dir=args.data_dir, options=_scorer_options(args))
    report = evaluate_scorer(
        scorer, data_dir=args.data_dir, heldout=not args.no_heldout, stress=args.stress, stress_runs=args.stress_run
    )
    text = format_report(report)
    print(text)
    if args.json_out:
        write_json_atomic(Path(args.json_out), report)
    if args.output_dir:
        from .plots import confusion_figure, write_png

        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, part in report.items():
            write_json_atomic(out / f"{name}.json", part)
        write_text_atomic(out / "report.md", f"# Scorer {scorer.id} (sha256 {scorer.sha256})\n\n" + text)
        accepted = report["agreement"]["judge_accepted"]
        title = f"{scorer.id}: judge-accepted test replies (n={accepted['n']:,})"
        write_png(confusion_figure(accepted["confusion"], title), out / "confusion.png")
        if report.get("goemotions"):
            go = report["goemotions"]
            title = f"{scorer.id}: GoEmotions {go['split']}, Ekman grouping (n={go['n']:,})"
            write_png(confusion_figure(go["confusion"], title), out / "confusion-goemotions.png")
        print(f"written to {out}")
    scorer.check_failures()


def _scorer_trainers() -> dict:
    """The scorers sev-bench trains itself: name -> train(args) returning the saved path."""
    from .scoring import emotion_classifier, minilm_finetuned, minilm_probe

    return {
        emotion_classifier.NAME: lambda args: emotion_classifier.train(data_dir=args.data_dir, seed=args.seed),
        minilm_finetuned.NAME: lambda args: minilm_finetuned.train_finetuned(data_dir=args.data_dir, seed=args.seed),
        minilm_probe.NAME: lambda args: minilm_probe.train_probe(data_dir=args.data_dir, seed=args.seed),
    }


def cmd_score(args) -> None:
    from .scoring import load_scorer
    from .scoring.files import score_jsonl

    if not Path(args.input).is_file():
        raise UserError(f"{args.input}: no such file")
    summary = score_jsonl(
        load_scorer(args.scorer, data_dir=args.data_dir, options=_scorer_options(args)),
        args.input,
        args.output,
        text_field=args.text_field,
        target_field=args.target_field,
    )
    print(json.dumps(summary))


def _add_report_commands(commands) -> None:
    """`leaderboard build`, `compare` and `check` (issue 7)."""
    leaderboard = commands.add_parser("leaderboard", help="validate published runs and build the leaderboard")
    board_commands = leaderboard.add_subparsers(dest="leaderboard_command", required=True, parser_class=_Parser)
    build = board_commands.add_parser("build", help="write README.md, leaderboard.csv, index.html and plots/")
    build.add_argument("--dir", default="leaderboards", help="leaderboard folder (default: leaderboards)")
    build.add_argument("--strict", action="store_true", help="exit 1 when any run dir is refused")

    compare = commands.add_parser(
        "compare", help="paired comparison of two runs, fluent hits then raw hits (McNemar, bootstrap deltas)"
    )
    compare.add_argument("a", help="run A: a run dir or its results.json")
    compare.add_argument("b", help="run B: a run dir or its results.json")
    compare.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("-o", "--output", help="also write the markdown report here")

    check = commands.add_parser("check", help="fail (exit 1) when accuracy dropped below a baseline's")
    check.add_argument("results", help="the run to check: a run dir or its results.json")
    check.add_argument("--baseline", required=True, help="the baseline run dir or results.json")
    check.add_argument(
        "--tolerance", type=_finite, required=True, help="largest allowed drop, absolute in [0, 1] (0.05 = 5 points)"
    )


def _write_run_plots(results: dict, run_dir: Path) -> None:
    try:
        from .plots import write_run_plots

        paths = write_run_plots(results, run_dir)
    except Exception as exc:  # a finished run stays finished even if a plot fails
        print(f"sev-bench: warning: plots not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    print("plots: " + ", ".join(str(path) for path in paths))


def cmd_leaderboard(args) -> int:
    from .leaderboard import build

    entries, refused, written = build(args.dir)
    for path, reason in refused:
        print(f"refused {path}: {reason}", file=sys.stderr)
    print(f"{len(entries)} runs on the board, {len(refused)} refused; wrote {len(written)} files under {args.dir}")
    return 1 if args.strict and refused else 0


def cmd_compare(args) -> None:
    from .compare import compare, compare_markdown

    text = compare_markdown(compare(args.a, args.b, resamples=args.resamples, seed=args.seed))
    print(text, end="")
    if args.output:
        from .atomic import write_text_atomic

        write_text_atomic(Path(args.output), text)


def cmd_check(args) -> int:
    from .check import check, check_markdown

    report = check(args.results, args.baseline, args.tolerance)
    print(check_markdown(report), end="")
    return 0 if report.passed else 1


def _add_discovery_commands(commands) -> None:
    """`discover directions` (issue 3) and `tune` (dev-split hyper-parameter search)."""
    discover = commands.add_parser("discover", help="find what a control method needs in a model")
    what = discover.add_subparsers(dest="discover_command", required=True, parser_class=_Parser)
    directions = what.add_parser("directions", help="emotion directions from the train split (steering)")
    directions.add_argument("--model", default="smollm2-135m", help="alias, local dir, GGUF file or hub id")
    directions.add_argument("--limit", type=int, help="only the first N train rows, themes interleaved")
    directions.add_argument(
        "--accept",
        default="all",
        choices=("all", "scorer"),
        help="which train rows count: all (default; no replies generated) or only those whose "
        "prompt-elicited reply the scorer accepts (the protocol's choice)",
    )
    directions.add_argument("--output-dir", help="artifact dir (default: the cache, keyed by model and inputs)")
    directions.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer for --accept scorer")
    directions.add_argument("--batch-size", type=int, default=16)
    directions.add_argument("--dtype", default="auto")
    directions.add_argument("--device", default="auto")
    directions.add_argument("--threads", type=int, help="CPU threads for torch")
    directions.add_argument("--no-progress", action="store_true")
    _add_scorer_options(directions)
    _add_data_dir(directions)

    circuit = what.add_parser(
        "circuit", help="emotion circuits: neurons, heads, validation, sublayer importance, global circuit"
    )
    circuit.add_argument("--model", default="smollm2-135m", help="alias, local dir, GGUF file or hub id")
    circuit.add_argument("--limit", type=int, help="only the first N train rows, themes interleaved")
    circuit.add_argument("--accept", default="all", choices=("all", "scorer"), help="as for `discover directions`")
    circuit.add_argument("--output-dir", help="artifact dir (default: the cache, keyed by model and inputs)")
    circuit.add_argument(
        "--head-space",
        default="mlp_input",
        choices=("mlp_input", "residual"),
        help="where head importance is read: the MLP's input, post_attention_layernorm(h_mid), as the authors "
        "(default), or the raw mid residual",
    )
    circuit.add_argument(
        "--budget-rule",
        default="paper_shares",
        choices=("paper_shares", "per_sublayer"),
        help="circuit size: the paper's shares of heads (25%%) and MLP neurons (0.171%%) (default), or "
        "--budget-per-sublayer x 2 x layers split by --neuron-share",
    )
    circuit.add_argument(
        "--budget-per-sublayer", type=_finite, default=10.0, help="per_sublayer: K_total = this x 2 x layers (10)"
    )
    circuit.add_argument(
        "--neuron-share", type=_finite, default=0.7, help="per_sublayer: share of the budget for neurons (0.7)"
    )
    circuit.add_argument(
        "--rows-per-pass", type=int, default=128, help="prompt copies per batched forward pass (128; more on a GPU)"
    )
    circuit.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer for --accept scorer")
    circuit.add_argument("--batch-size", type=int, default=16)
    circuit.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16, float16")
    circuit.add_argument("--device", default="auto")
    circuit.add_argument("--threads", type=int, help="CPU threads for torch")
    circuit.add_argument("--no-progress", action="store_true")
    _add_scorer_options(circuit)
    _add_data_dir(circuit)


def _add_tune_command(commands) -> None:
    tune = commands.add_parser("tune", help="choose a method's hyper-parameters on the dev split")
    tune.add_argument("--method", required=True, help="method name or .yaml config to tune")
    tune.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to try (repeatable)")
    tune.add_argument("--output-dir", required=True, help="where the dev runs, tuning.md and tuned.yaml go")
    tune.add_argument("--model", default="smollm2-135m")
    tune.add_argument("--limit", type=int, help="only the first N dev rows, themes interleaved")
    tune.add_argument("--batch-size", type=int, default=16)
    tune.add_argument("--scorer", default=DEFAULT_SCORER)
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--seed", type=int, default=1234)
    tune.add_argument("--dtype", default="auto")
    tune.add_argument("--device", default="auto")
    tune.add_argument("--threads", type=int)
    tune.add_argument("--no-progress", action="store_true")
    _add_scorer_options(tune)
    _add_data_dir(tune)


def cmd_tune(args) -> None:
    from .runner import RunRequest
    from .tuning import TuneRequest, parse_grid, tune

    base = RunRequest(
        model=args.model,
        limit=args.limit,
        batch_size=args.batch_size,
        scorer=args.scorer,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        data_dir=args.data_dir,
        overrides=args.overrides,
        scorer_options=_scorer_options(args),
        threads=args.threads,
        progress=not args.no_progress,
    )
    tune(TuneRequest(args.method, parse_grid(args.grid), args.output_dir, base))
    out = Path(args.output_dir)
    print((out / "tuning.md").read_text(encoding="utf-8"))
    print(f"chosen config: {out / 'tuned.yaml'} (run it on test with --method {out / 'tuned.yaml'})")


def cmd_discover(args) -> None:
    if args.discover_command == "circuit":
        return _discover_circuit(args)
    from .discovery.directions import discover_for_model

    directions, reused = discover_for_model(
        args.model,
        accept=args.accept,
        limit=args.limit,
        output_dir=args.output_dir,
        scorer_name=args.scorer,
        scorer_options=_scorer_options(args),
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(
        f"directions: {directions.path} ({'reused' if reused else 'discovered'}; report: "
        f"{directions.path / 'report.md'})"
    )


def _discover_circuit(args) -> None:
    from .discovery.circuit import CircuitConfig, discover_for_model

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    config = CircuitConfig(
        accept=args.accept,
        limit=args.limit,
        head_space=args.head_space,
        budget_rule=args.budget_rule,
        budget_per_sublayer=args.budget_per_sublayer,
        neuron_share=args.neuron_share,
    )
    circuit, reused = discover_for_model(
        args.model,
        config=config,
        output_dir=args.output_dir,
        scorer_name=args.scorer,
        scorer_options=_scorer_options(args),
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_rows=args.rows_per_pass,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    meta = circuit.metadata
    print(f"circuit: {circuit.path} ({'reused' if reused else 'discovered'}; report: {circuit.path / 'report.md'})")
    print(
        "wall time per stage (s): "
        + ", ".join(
            f"{name} {info['seconds']}{' (reused)' if info.get('reused') else ''}"
            for name, info in meta["timings"].items()
        )
    )
    budget = meta["budget"]
    shares = budget.get("shares") or circuit.results_info()["shares"]
    print(
        f"budget ({budget.get('rule', 'per_sublayer')}): "
        + " + ".join(
            f"{shares[kind]['selected']} {kind} of {shares[kind]['total']} ({shares[kind]['percent']:.3g}%)"
            for kind in ("neurons", "heads")
        )
        + f" per emotion; mean pairwise Jaccard heads {meta['jaccard']['heads']['mean']:.3f}, neurons "
        f"{meta['jaccard']['neurons']['mean']:.3f}"
    )


COMMANDS = {
    "run": cmd_run,
    "data": cmd_data,
    "methods": cmd_methods,
    "scorers": cmd_scorers,
    "scorer": cmd_scorer,
    "score": cmd_score,
    "rescore": cmd_rescore,
    "fluency": cmd_fluency,
    "leaderboard": cmd_leaderboard,
    "compare": cmd_compare,
    "check": cmd_check,
    "discover": cmd_discover,
    "tune": cmd_tune,
}


def _multi_process_launch() -> bool:
    from .distributed import detect_launch

    return detect_launch() is not None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command != "run" and _multi_process_launch():
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
