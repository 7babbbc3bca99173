"""`sev-bench discover directions|circuit` and `tune`: what a control method needs from a model, and its
hyper-parameters chosen on the dev split."""

from __future__ import annotations

from pathlib import Path

from ..defaults import DEFAULT_SCORER
from ..discovery.circuit import CircuitConfig
from ..discovery.circuit import discover_for_model as discover_circuit
from ..discovery.directions import discover_for_model as discover_directions
from ..errors import UserError
from ..runner import RunRequest
from ..tuning import TuneRequest, parse_grid, tune
from .common import Parser, add_data_dir, add_scorer_options, finite, scorer_options


def add_parsers(commands) -> None:
    """`discover directions|circuit` and `tune`."""
    _add_discover_command(commands)
    _add_tune_command(commands)


def _add_discover_command(commands) -> None:
    discover = commands.add_parser("discover", help="find what a control method needs in a model")
    what = discover.add_subparsers(dest="discover_command", required=True, parser_class=Parser)
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
    add_scorer_options(directions)
    add_data_dir(directions)

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
        "--budget-per-sublayer", type=finite, default=10.0, help="per_sublayer: K_total = this x 2 x layers (10)"
    )
    circuit.add_argument(
        "--neuron-share", type=finite, default=0.7, help="per_sublayer: share of the budget for neurons (0.7)"
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
    add_scorer_options(circuit)
    add_data_dir(circuit)


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
    add_scorer_options(tune)
    add_data_dir(tune)


def cmd_tune(args) -> None:
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
        scorer_options=scorer_options(args),
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
    directions, reused = discover_directions(
        args.model,
        accept=args.accept,
        limit=args.limit,
        output_dir=args.output_dir,
        scorer_name=args.scorer,
        scorer_options=scorer_options(args),
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
    circuit, reused = discover_circuit(
        args.model,
        config=config,
        output_dir=args.output_dir,
        scorer_name=args.scorer,
        scorer_options=scorer_options(args),
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


COMMANDS = {"discover": cmd_discover, "tune": cmd_tune}
