"""`sev-bench scorers`, `scorer train|eval|export`, `score`, `rescore` and `fluency calibrate|regate`: the
emotion scorers and the fluency gate, and applying them to texts and finished runs."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from ..defaults import DEFAULT_SCORER
from ..errors import UserError
from ..fluency_calibration import calibrate, none_dev_model, write_calibration
from ..models import load_model
from ..plots import confusion_figure, write_png
from ..regate import regate_run
from ..rescore import rescore
from ..scoring import SCORERS, emotion_classifier, load_scorer, minilm_finetuned, minilm_probe
from ..scoring.evaluation import evaluate_scorer, format_report
from ..scoring.export import export_scorer
from ..scoring.files import score_jsonl
from .common import Parser, add_data_dir, add_scorer_options, scorer_options, write_plots


def add_parsers(commands) -> None:
    """`scorers`, `scorer train|eval|export`, `score`, `fluency calibrate|regate` and `rescore`."""
    commands.add_parser("scorers", help="list registered scorers")
    _add_scorer_command(commands)

    score = commands.add_parser("score", help="score the texts of any JSONL file")
    score.add_argument("input", help="JSONL with a text field and a target-emotion field")
    score.add_argument("-o", "--output", required=True, help="output JSONL")
    score.add_argument("--scorer", default=DEFAULT_SCORER)
    score.add_argument("--text-field", default="text")
    score.add_argument("--target-field", default="target_emotion")
    add_scorer_options(score)
    add_data_dir(score)

    fluency = commands.add_parser("fluency", help="the fluency gate: calibrate a model's bound, regate a run")
    fluency_commands = fluency.add_subparsers(dest="fluency_command", required=True)
    calibrate_command = fluency_commands.add_parser(
        "calibrate", help="measure a model's perplexity bound from its finished `none` run on the dev split"
    )
    calibrate_command.add_argument("run_dir", help="a finished `none` run on dev (its model is the one calibrated)")
    calibrate_command.add_argument("--out-dir", help="where the calibration file goes (default: the package's)")
    calibrate_command.add_argument("--threads", type=int, help="CPU threads for torch")
    add_data_dir(calibrate_command)
    regate = fluency_commands.add_parser(
        "regate", help="redraw a finished run's fluency verdicts under today's gate (a new run dir)"
    )
    regate.add_argument("run_dir", help="a finished run's output dir")
    regate.add_argument("--output-dir", required=True, help="where the regated run goes")
    regate.add_argument("--threads", type=int, help="CPU threads for torch")
    add_data_dir(regate)

    rescore_command = commands.add_parser(
        "rescore", help="score a finished run's saved replies again with another scorer"
    )
    rescore_command.add_argument("run_dir", help="a finished run's output dir")
    rescore_command.add_argument("--scorer", required=True, help="the scorer to apply (see `sev-bench scorers`)")
    rescore_command.add_argument("--output-dir", help="where the rescored run goes (default: RUN_DIR-<scorer>)")
    rescore_command.add_argument("--no-progress", action="store_true")
    add_scorer_options(rescore_command)
    add_data_dir(rescore_command)


def _add_scorer_command(commands) -> None:
    scorer = commands.add_parser("scorer", help="train or evaluate an emotion scorer")
    scorer_commands = scorer.add_subparsers(dest="scorer_command", required=True, parser_class=Parser)
    train = scorer_commands.add_parser(
        "train", help="(re)train a built-in scorer (minilm-emotions, minilm-finetuned, minilm-probe) and measure it"
    )
    train.add_argument("--scorer", default=DEFAULT_SCORER, help="minilm-emotions, minilm-finetuned or minilm-probe")
    train.add_argument("--seed", type=int, default=0)
    add_data_dir(train)
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
    add_scorer_options(evaluate)
    add_data_dir(evaluate)

    export_command = scorer_commands.add_parser(
        "export", help="write the scorer as a standard Hugging Face text-classification dir with a model card"
    )
    export_command.add_argument("dir", help="output folder (new or empty)")
    export_command.add_argument("--scorer", default=DEFAULT_SCORER)
    add_data_dir(export_command)


def cmd_scorers(args) -> None:
    for name in SCORERS.names():
        print(f"{name:<16} {SCORERS.get(name).description}")


def cmd_scorer(args) -> None:
    if args.scorer_command == "export":
        return _export_scorer(args)
    if args.scorer_command == "train":
        return _train_scorer(args)
    return _evaluate_scorer(args)


def _export_scorer(args) -> None:
    SCORERS.get(args.scorer)  # an unknown name fails before anything loads
    if Path(args.dir).exists() and any(Path(args.dir).iterdir()):
        raise UserError(f"{args.dir} exists and is not empty; choose a new folder for the export")
    out = export_scorer(load_scorer(args.scorer, data_dir=args.data_dir), args.dir)
    print(f"wrote {out}: load it with transformers.pipeline('text-classification', model='{out}', top_k=None)")


def _scorer_trainers() -> dict:
    """The scorers sev-bench trains itself: name -> train(args) returning the saved path."""
    return {
        emotion_classifier.NAME: lambda args: emotion_classifier.train(data_dir=args.data_dir, seed=args.seed),
        minilm_finetuned.NAME: lambda args: minilm_finetuned.train_finetuned(data_dir=args.data_dir, seed=args.seed),
        minilm_probe.NAME: lambda args: minilm_probe.train_probe(data_dir=args.data_dir, seed=args.seed),
    }


def _train_scorer(args) -> None:
    trainers = _scorer_trainers()
    if args.scorer not in trainers:
        raise UserError(f"--scorer {args.scorer} is not trained by sev-bench; trainable: {', '.join(trainers)}")
    path = trainers[args.scorer](args)
    trained = SCORERS.get(args.scorer).load(data_dir=args.data_dir)
    print(f"trained {args.scorer}: {path}")
    print(format_report(evaluate_scorer(trained, data_dir=args.data_dir)))


def _evaluate_scorer(args) -> None:
    for run_dir in args.stress_run:  # before the scorer loads: a typo fails at once
        if not (Path(run_dir) / "samples.jsonl").is_file():
            raise UserError(f"--stress-run {run_dir}: no samples.jsonl there (a `sev-bench run` output dir)")
    scorer = load_scorer(args.scorer, data_dir=args.data_dir, options=scorer_options(args))
    report = evaluate_scorer(
        scorer, data_dir=args.data_dir, heldout=not args.no_heldout, stress=args.stress, stress_runs=args.stress_run
    )
    text = format_report(report)
    print(text)
    if args.json_out:
        write_json_atomic(Path(args.json_out), report)
    if args.output_dir:
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


def cmd_score(args) -> None:
    if not Path(args.input).is_file():
        raise UserError(f"{args.input}: no such file")
    summary = score_jsonl(
        load_scorer(args.scorer, data_dir=args.data_dir, options=scorer_options(args)),
        args.input,
        args.output,
        text_field=args.text_field,
        target_field=args.target_field,
    )
    print(json.dumps(summary))


def cmd_rescore(args) -> None:
    if not (Path(args.run_dir) / "results.json").is_file():  # before the scorer loads: a typo fails at once
        raise UserError(f"{args.run_dir}: no results.json; rescore works on finished runs")
    SCORERS.get(args.scorer)
    scorer = load_scorer(args.scorer, data_dir=args.data_dir, options=scorer_options(args))
    results, out = rescore(args.run_dir, scorer, args.output_dir, progress=not args.no_progress)
    before = results["rescore"]["from_accuracy_overall"]["acc"]
    after = results["metrics"]["accuracy"]["overall"]["acc"]
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(
        f"overall accuracy {100 * before:.1f}% with {results['rescore']['from_scorer']['id']} -> "
        f"{100 * after:.1f}% with {scorer.id}"
    )
    print(f"results: {out / 'results.json'}")
    write_plots(results, out)


def cmd_fluency(args) -> None:
    if args.fluency_command == "calibrate":
        return _calibrate(args)
    results, out = regate_run(args.run_dir, args.output_dir, args.data_dir, threads=args.threads)
    block = results["regate"]
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(
        f"fluent share {block['from_fluent_share']} -> {results['metrics']['fluency']['fluent_share']}; "
        f"{block['verdicts_changed']} verdicts changed ({block['fluent_to_not']} fluent -> not, "
        f"{block['not_to_fluent']} not -> fluent); results: {out / 'results.json'}"
    )


def _calibrate(args) -> None:
    run_dir = Path(args.run_dir)
    model = none_dev_model(run_dir)  # a wrong run fails before the model loads
    if args.threads:
        import torch  # heavy: only this command needs it, and only with --threads

        torch.set_num_threads(args.threads)
    loaded = load_model(model["id"], dtype=model["dtype"], device="cpu")
    record = calibrate(loaded, run_dir, {"id": model["id"], "revision": loaded.revision}, args.data_dir)
    path = write_calibration(record, Path(args.out_dir) if args.out_dir else None)
    print(json.dumps({k: record[k] for k in ("max_perplexity", "counts", "perplexity", "below_bound")}, indent=1))
    print(f"fluency bound for {model['id']}: {record['max_perplexity']} -> {path}")


COMMANDS = {
    "scorers": cmd_scorers,
    "scorer": cmd_scorer,
    "score": cmd_score,
    "rescore": cmd_rescore,
    "fluency": cmd_fluency,
}
