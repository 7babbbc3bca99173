"""Emotion circuits (docs/protocol.md, steps 4-6b): neurons, heads, causal validation, difference vectors,
sublayer importance and the budgeted global circuit that the `circuit` method modulates (step 7).

Stages (`sev-bench discover circuit`), each cached in `<output dir>/stages/` so a killed discovery resumes,
one module each in `sev_bench.discovery.stages`, run in the order of `CIRCUIT_STAGES` below:

0. `directions`: the emotion directions, through `obtain_directions` (same acceptance and limit).
1. `activations` (steps 4a, 5): one prefill of the emotion-instructed prompt of every accepted train row,
   reading at the last prompt token the MLP down-projection input `a` and the attention output-projection
   input `x` of every layer, and the residual after each sublayer.
   - neurons: `c = a * (W_down^T v_e)` with `v_e` the MLP direction of the same layer; C_mean / C_pos / C_neg
     per emotion over its accepted rows (all valences); ranked by C_mean within each layer.
   - difference vectors: `dmu_e = mean_g (x_{g,e} - mean_e' x_{g,e'})` over complete (skeleton, valence)
     groups, for `a` and for `x` (grouped by skeleton AND valence, over every complete group: the authors'
     MLP script grouped by skeleton alone; not normalised).
   - sigma_{L,p}: the mean RMS of the last-token residual after the attention sublayer (p=attn) and after
     the layer (p=mlp; before the final norm, also in the last layer).
2. `heads` (step 4b): importance of head h of layer l = mean over the emotion's accepted rows of
   `s - s_masked`, with `s = <m^(l), v_e,attn^(l)>` at the last prompt token and `s_masked` the same
   with the head's slice of the o_proj input zeroed. `m` depends on `head_space`:
   - `mlp_input` (default, as the authors' script computes it): the MLP's actual input,
     `post_attention_layernorm(h_mid)` = h_mid / RMS(h_mid) times the norm's learned gain. The paper's
     head-importance figures (top head 1.1-2.4, median about 0.001) are in this space.
   - `residual`: the raw mid-layer residual h_mid = h_in + attn_out (sev-bench's reading before issue 14:
     the head's direct effect <W_O[:, head] x_head, v>, linear in the head's output).
   The direction v_e,attn is the same in both: the directions artifact's `attn` direction, read on the raw
   h_mid, which is also where the authors read theirs (attention output + residual, no norm); so the
   default projects the normalised MLP input on a raw-residual direction, exactly as the authors do.
   Batched: each prompt is prefilled once without its last token; then one decode step runs that token
   for many copies of each prompt, every copy zeroing a different head (per-row specs), and the forward
   stops after the deepest layer measured (before its MLP). Zeroing at the last token is exact here:
   o_proj acts per position and `s` is read at the same layer.
3. `sublayers` (step 6a): `I_{L,p} = (mean <h_final', v_ref> - mean <h_final, v_ref>) / (alpha sigma_{L,p})`
   with `alpha sigma_{L,p} v_hat` added to the sublayer output at the last token of the neutral prompt (no
   emotion), h_final the post-norm last hidden state, v_ref the sign-aligned mean of the attn and mlp
   directions of the protocol's layers 21-25 of 28 (scaled to depth), v_hat the local direction aligned to
   v_ref; averaged over alpha, normalised to sum 1 per emotion. Batched like the heads (one copy per
   (emotion, alpha, sublayer)).
4. `validation` (paper section 6): at the most important layer of each kind (or given layers), ablation
   of the top-k neurons / heads vs k random ones, and enhancement (adding `scale * dmu` to those components),
   over a grid of k and scales; the score is the ranking's projection at that layer (for heads in the
   `head_space` they were ranked in) and <h_final, v_ref>.
5. integration (step 6b): the budget per kind, then a minimum per layer, the rest proportional to
   max(I, 0) (floor + largest remainder), capped at `cap_fraction * K_kind` (and the heads a layer has),
   backfilled; then the top neurons by C_mean and heads by importance in each layer. The budget
   (`budget_rule`):
   - `paper_shares` (default): the shares the paper's budget selects on its model, Llama-3.2-3B-Instruct
     (28 layers x 24 heads, MLP width 8192): K_heads = round(168/672 x this model's heads) (25%),
     K_neurons = round(392/229,376 x this model's MLP neurons) (0.171%); each at least the per-layer
     minimums x layers. A budget of 10 per sublayer keeps neither share on a smaller model (SmolLM2-135M:
     180 of 270 heads, 67%), so the old rule made a dense circuit of a small model.
   - `per_sublayer` (before issue 14): `budget_per_sublayer * 2 * layers`, split neuron_share / rest
     (560 = 392 + 168 on the paper's model, so both rules agree there).
   Cheap; redone when only its settings change.

The artifact (folder): `circuit.safetensors` (`neurons` [6, L, d_ff] and `heads` [6, L, H] selection
masks, `dmu_mlp` [6, L, d_ff], `dmu_attn` [6, L, H*head_dim]), `circuit.json` (the selected indices),
`metadata.json` (model, dataset, scorer, directions sha256, config, the budget and the shares of heads and
neurons selected, timings; written last), `report.md` + PNGs, `validation.csv`, and `stages/` (the
per-stage analysis tensors); see `circuit_artifact`.

This module runs the stages (`CIRCUIT_STAGES`, through the stage cache), then the integration, and writes
the artifact. Where the rest lives: the settings in `circuit_config`, the formulas in `circuit_math`, the
prompts in `circuit_inputs`, the batched last-token engine in `last_token`, the report in
`circuit_report` (figures: `circuit_figures`, numbers: `circuit_summary`), and what the directions and
the circuits share (artifact checks, cache folders, the stage cache) in `artifacts`. torch is imported
inside functions: the CLI imports this module at start-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import write_json_atomic
from ..data import dataset_fingerprint, load_sev, select_rows
from ..defaults import DEFAULT_SCORER
from ..errors import UserError
from ..paths import shown_path
from ..prompts import EMOTIONS, VALENCES
from .artifacts import MIN_GROUPS, key_digest, load_stage, progress_bar, save_stage, seal, write_tensors
from .circuit_artifact import (
    ARTIFACT_FORMAT,
    Circuit,
    analysis_key,
    check_circuit,
    circuit_key,
    circuit_metadata,
    default_circuit_dir,
    load_circuit,
    selected_indices,
    write_validation_csv,
)
from .circuit_config import BUDGET_RULES, HEAD_SPACES, CircuitConfig
from .circuit_inputs import accepted_rows, build_inputs
from .circuit_math import reference_directions, reference_layers
from .circuit_report import write_circuit_report
from .context import command_context
from .directions import obtain_directions
from .stages import activations, heads, sublayers, validation
from .stages.integration import integrate
from .stages.job import CircuitJob, Stage

# The public names other modules import from here (the CLI, the `circuit` method, the benchmarks).
__all__ = [
    "BUDGET_RULES",
    "CIRCUIT_STAGES",
    "HEAD_SPACES",
    "Circuit",
    "CircuitConfig",
    "check_circuit",
    "discover_circuit",
    "discover_for_model",
    "integrate",
    "load_circuit",
    "obtain_circuit",
]

# The cached stages, in the order they run (each reads the tensors of those before it). The integration
# (step 6b) follows them, uncached.
CIRCUIT_STAGES = (
    Stage("activations", "prompt", activations.describe, activations.total, activations.compute),
    Stage("heads", "copy", heads.describe, heads.total, heads.compute),
    Stage("sublayers", "copy", sublayers.describe, sublayers.total, sublayers.compute),
    Stage("validation", "copy", validation.describe, validation.total, validation.compute),
)


def discover_circuit(
    loaded,
    *,
    config: CircuitConfig,
    dataset_sha256: dict,
    train_rows: list[dict],
    directions,
    directions_timings: dict | None = None,
    scorer=None,
    output_dir: str | Path | None = None,
    dtype: str = "auto",
    batch_size: int = 16,
    max_rows: int = 128,
    progress: bool = True,
    log=print,
    report: bool = True,
) -> tuple[Circuit, bool]:
    """The circuit for `loaded`: reused when the output dir (default: the cache folder for these inputs)
    holds one made from the same inputs and settings; else the missing stages are computed there.
    `report=False` skips report.md and the figures. Returns (circuit, reused)."""
    if config.accept == "scorer" and scorer is None:
        raise ValueError("accept='scorer' needs a scorer")
    if max_rows < 2:
        raise UserError("--rows-per-pass must be >= 2")
    scorer_sha256 = scorer.sha256 if scorer is not None else None
    key = circuit_key(loaded, dataset_sha256, scorer_sha256, directions.sha256, config, dtype)
    out = Path(output_dir) if output_dir else default_circuit_dir(key)
    existing = _prepare_output(out, key, config, explicit=bool(output_dir), log=log)
    if existing is not None:
        return existing, True

    rows = train_rows[: config.limit] if config.limit else list(train_rows)
    job = circuit_job(loaded, config, rows, directions, batch_size, max_rows)
    timings: dict[str, dict] = {}
    if directions_timings is not None:
        timings["directions"] = directions_timings
    digest = key_digest(analysis_key(key))  # the stages depend on the analysis settings only
    tensors, infos = run_stages(job, out, digest, timings, progress, log)

    provenance = {
        "dataset_sha256": dataset_sha256,
        "scorer": scorer.info() if scorer is not None and config.accept == "scorer" else None,
        "directions": {"path": shown_path(directions.path), "sha256": directions.sha256},
        "train_rows": len(rows),
    }
    records = infos["validation"]["records"]
    circuit = _integrate_and_save(job, out, key, provenance, tensors, records, timings, log)
    if report:
        started = time.perf_counter()
        write_circuit_report(circuit, tensors["activations"], tensors["heads"], tensors["sublayers"], records, out)
        timings["report"] = {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    elif (out / "report.md").is_file():
        (out / "report.md").unlink()  # it described the circuit this one replaces
    write_json_atomic(out / "metadata.json", seal(circuit.metadata))  # last: marks the artifact complete
    return circuit, False


def _prepare_output(out: Path, key: dict, config: CircuitConfig, explicit: bool, log) -> Circuit | None:
    """The circuit in `out` when it was made from `key` and these integration settings. Else `out` is made
    ready for this key (key.json written); in an `explicit` output dir, an artifact or stages made from
    other analysis inputs are refused."""
    analysis = analysis_key(key)
    existing = None
    if (out / "metadata.json").is_file():
        try:
            existing = load_circuit(out)
        except UserError as exc:  # a damaged artifact: redo what is missing (the stages are checked one by one)
            log(f"{exc}; rebuilding it")
    if existing is not None:
        made = existing.metadata.get("key") or {}
        if made == key and existing.metadata.get("integration") == config.integration():
            log(f"reusing the circuit in {out} (same model, data, scorer, directions and settings)")
            return existing
        if analysis_key(made) != analysis and explicit:
            raise UserError(f"{out} holds a circuit made from other inputs; choose another --output-dir")
    key_path = out / "key.json"
    if key_path.is_file() and analysis_key(json.loads(key_path.read_text(encoding="utf-8"))) != analysis:
        if explicit:
            raise UserError(f"{out} holds circuit stages made from other inputs; choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key_path, key)
    return None


def circuit_job(loaded, config: CircuitConfig, rows: list[dict], directions, batch_size: int, max_rows: int):
    """The stages' CircuitJob: the accepted rows' prompts (at least MIN_GROUPS complete groups), the
    directions as float and the reference direction v_ref of the protocol's layers."""
    inputs = build_inputs(loaded, rows, accepted_rows(directions, rows, config), config)
    if inputs.groups < MIN_GROUPS:
        raise UserError(
            f"only {inputs.groups} complete (skeleton, valence) groups among the accepted rows; at least "
            f"{MIN_GROUPS} are needed (drop --limit, or accept=all)"
        )
    unit_directions = {p: directions.tensors[p].float() for p in ("attn", "mlp")}
    layers = reference_layers(loaded.num_layers)
    return CircuitJob(
        loaded=loaded,
        config=config,
        inputs=inputs,
        directions=unit_directions,
        v_ref=reference_directions(unit_directions["attn"], unit_directions["mlp"], layers),
        reference_layers=layers,
        batch_size=batch_size,
        max_rows=max_rows,
    )


def run_stages(job: CircuitJob, out: Path, digest: str, timings: dict, progress: bool, log) -> tuple[dict, dict]:
    """Runs CIRCUIT_STAGES in order, each reused from `out/stages/` when it was made from the same
    analysis inputs (`digest`), else computed and saved there; records each one's time in `timings`.
    Returns (tensors, info) by stage name."""
    tensors: dict[str, dict] = {}
    infos: dict[str, dict] = {}
    for stage in CIRCUIT_STAGES:
        found = load_stage(out, stage.name, digest)
        if found is not None:
            tensors[stage.name], infos[stage.name] = found
            timings[stage.name] = {"seconds": infos[stage.name]["seconds"], "reused": True}
            log(f"stage {stage.name}: reusing {out / 'stages' / (stage.name + '.safetensors')}")
            continue
        log(f"stage {stage.name}: {stage.describe(job)}")
        bar = progress_bar(stage.total(job, tensors), stage.name, stage.unit, progress)
        started = time.perf_counter()
        try:
            computed, info = stage.compute(job, tensors, bar)
        finally:
            if bar is not None:
                bar.close()
        seconds = round(time.perf_counter() - started, 2)
        info = {**info, "seconds": seconds}
        save_stage(out, stage.name, digest, computed, info)
        tensors[stage.name], infos[stage.name] = computed, info
        timings[stage.name] = {"seconds": seconds, "reused": False}
    return tensors, infos


def _integrate_and_save(job: CircuitJob, out: Path, key, provenance, stages: dict, records, timings, log) -> Circuit:
    """Step 6b, then the artifact's files but metadata.json (circuit.safetensors, circuit.json,
    validation.csv). Returns the circuit with its (unsealed) metadata."""
    import torch

    started = time.perf_counter()
    meta_path = out / "metadata.json"
    if meta_path.is_file():
        meta_path.unlink()  # the old artifact is replaced: never leave metadata that describes other tensors
    acts = stages["activations"]
    neuron_masks, head_masks, counts = integrate(
        stages["sublayers"]["importance"],
        acts["contrib_mean"],
        stages["heads"]["head_importance"],
        job.config,
        job.loaded.num_heads,
        log,
    )
    tensors = {
        "neurons": neuron_masks.to(torch.uint8),
        "heads": head_masks.to(torch.uint8),
        "dmu_mlp": acts["dmu_mlp"].float(),
        "dmu_attn": acts["dmu_attn"].float(),
    }
    tensor_path = out / "circuit.safetensors"
    write_tensors(tensor_path, tensors, metadata={"format": ARTIFACT_FORMAT})
    write_json_atomic(out / "circuit.json", selected_indices(neuron_masks, head_masks))
    write_validation_csv(out / "validation.csv", records)
    timings["integration"] = {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    metadata = circuit_metadata(
        key=key,
        job=job,
        provenance=provenance,
        rows_per_emotion=acts["rows_per_emotion"],
        validation_layers=validation.validation_plan(job, stages["sublayers"]["importance_raw"])[0],
        masks=(neuron_masks, head_masks),
        counts=counts,
        tensor_path=tensor_path,
        timings=timings,
    )
    return Circuit(out, tensors, metadata)


def obtain_circuit(
    context, config: CircuitConfig, output_dir=None, max_rows: int = 128, announce: bool = True
) -> tuple[Circuit, bool]:
    """The cached circuit for this model and these inputs, discovered first (directions included) when
    there is none (said on the log when `announce`). Returns (circuit, reused)."""
    fingerprint = dataset_fingerprint(context.data_dir)
    scorer = context.scorer if config.accept == "scorer" else None
    started = time.perf_counter()
    directions, reused = obtain_directions(context, config.accept, config.limit)
    directions_timings = (
        {"seconds": round(sum(directions.metadata.get("timings", {}).values()), 2), "reused": True}
        if reused
        else {"seconds": round(time.perf_counter() - started, 2), "reused": False}
    )
    if output_dir is None and announce:
        key = circuit_key(
            context.loaded,
            fingerprint,
            scorer.sha256 if scorer is not None else None,
            directions.sha256,
            config,
            context.dtype,
        )
        target = default_circuit_dir(key)
        if not (target / "metadata.json").is_file():
            context.log(
                f"no emotion circuit cached for {context.loaded.model_id} with these settings; discovering it "
                f"first (the same as `sev-bench discover circuit --accept {config.accept}"
                + (f" --limit {config.limit}" if config.limit else "")
                + f"`) into {target}"
            )
    train = select_rows(load_sev(context.data_dir)["train"], list(EMOTIONS), list(VALENCES), None)
    return discover_circuit(
        context.loaded,
        config=config,
        dataset_sha256=fingerprint,
        train_rows=train,
        directions=directions,
        directions_timings=directions_timings,
        scorer=scorer,
        output_dir=output_dir,
        dtype=context.dtype,
        batch_size=context.batch_size,
        max_rows=max_rows,
        progress=context.progress,
        log=context.log,
    )


def discover_for_model(
    model: str,
    *,
    config: CircuitConfig,
    output_dir: str | None = None,
    scorer_name: str = DEFAULT_SCORER,
    scorer_options: dict | None = None,
    data_dir: str | None = None,
    batch_size: int = 16,
    max_rows: int = 128,
    dtype: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Circuit, bool]:
    """`sev-bench discover circuit`: load the model (and the scorer for accept=scorer), then reuse or
    compute the circuit. Returns (circuit, reused)."""
    context = command_context(
        model,
        accept=config.accept,
        scorer_name=scorer_name,
        scorer_options=scorer_options,
        data_dir=data_dir,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        threads=threads,
        progress=progress,
    )
    return obtain_circuit(context, config, output_dir=output_dir, max_rows=max_rows, announce=False)
