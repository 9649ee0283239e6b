"""The main job's drift reads, logged to the tracker its training losses went to (`--report-to`).

After the analysis, each EM run of the 2x2 (`em_persona`, `em_base`, `em_control`,
`em_base_control`) gets its reads at every recorded checkpoint, at the checkpoint's global step, in
the same tracker run as its training loss (TensorBoard: an event file beside the loss events in
`<run>/<em run>/em/tensorboard/`; trackio: the same project and run name; wandb: the training
run, resumed by its id). Per checkpoint, at the analysis's chosen layer:

    drift/persona_projection        default behaviour along the persona direction (0 = base, 1 = persona)
    drift/misalignment_movement     its change along the judge-free misalignment direction (item spreads)
    drift/direction_stability       cosine of the checkpoint's persona direction with the reference's
    drift/persona_probe_transfer    held-out accuracy of the reference's persona probe
    drift/misaligned_rate, drift/mean_alignment, drift/mean_coherence
                                    behaviour, where it was measured (the starting model at step 0, the
                                    end of EM, and with --monitor intermediate checkpoints)

A missing value (None, NaN) is left out, never logged as 0. The analysis folder's `tracking.json`
records what was logged, so a rerun that redoes nothing logs nothing twice.

    from analysis.experiments.tracking import log_drift
    log_drift("runs/sycophancy-default-insecure-s0", "tensorboard")
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from analysis.drift_report import RUNS
from analysis.headline import START_PAIRS
from anchor.runs import em_stage
from anchor.store import atomic_write_json
from train import tracking

# metrics.json's per-checkpoint series (per layer) -> tag, read at the chosen layer
SERIES_TAGS = {
    "anchor_projection": "drift/persona_projection",
    "misalignment_movement": "drift/misalignment_movement",
    "direction_stability": "drift/direction_stability",
    "probe_transfer": "drift/persona_probe_transfer",
}
# a behavioural evaluation's metrics (em_eval.summarise) -> tag
BEHAVIOUR_TAGS = {
    "misaligned_rate": "drift/misaligned_rate",
    "mean_alignment": "drift/mean_alignment",
    "mean_coherence": "drift/mean_coherence",
}
START_OF = {run: start for start, runs in START_PAIRS.items() for run in runs}  # each run's starting model


def _number(value) -> float | None:
    """A loggable scalar, or None for a missing one (None, NaN, an estimate without a value)."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _behaviour(metrics: dict | None) -> dict[str, float]:
    out = {}
    for key, tag in BEHAVIOUR_TAGS.items():
        value = _number((metrics or {}).get(key))
        if value is not None:
            out[tag] = value
    return out


def drift_scalars(
    metrics: dict, run: str, out: str | os.PathLike | None = None
) -> dict[int, dict[str, float]]:
    """`{step: {tag: value}}` of one EM run (`persona`, `base`, ...) from the main job's
    `analysis/metrics.json`; `out` (the run folder) adds the behaviour of intermediate
    checkpoints evaluated with --monitor (`eval/<run>_step-XXXXX`)."""
    drift = metrics["drift"]
    layer = drift["best_layer"]
    data = drift["runs"][run]
    steps = data["steps"]
    scalars: dict[int, dict[str, float]] = {step: {} for step in steps}
    for key, tag in SERIES_TAGS.items():
        for step, by_layer in zip(steps, data.get(key) or []):
            value = _number(by_layer[layer]) if by_layer is not None and layer < len(by_layer) else None
            if value is not None:
                scalars[step][tag] = value
    behaviour = metrics.get("behaviour") or {}
    if steps:
        scalars[steps[0]].update(_behaviour(behaviour.get(START_OF.get(run, ""))))
        scalars[steps[-1]].update(_behaviour(behaviour.get(f"{run}_end")))
    rates = ((metrics.get("monitoring") or {}).get("runs") or {}).get(run, {}).get("behaviour_rates") or {}
    for step, rate in rates.items():
        value = _number(rate)
        if value is not None and int(step) in scalars:
            scalars[int(step)].setdefault(BEHAVIOUR_TAGS["misaligned_rate"], value)
    if out is not None:
        for step in steps[1:-1]:
            summary = Path(out) / "eval" / f"{run}_step-{step:05d}" / "summary.json"
            if summary.is_file():
                scalars[step].update(_behaviour(json.loads(summary.read_text()).get("metrics")))
    return {step: values for step, values in scalars.items() if values}


class _TensorBoard:
    def __init__(self, stage: Path, name: str, project: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(tracking.log_dir(stage)), filename_suffix=".drift")

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, stage: Path, name: str, project: str) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=name, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        # the trainer logs train/global_step beside its losses (trackio's own step counts log calls):
        # with it as the x-axis the drift reads sit at their checkpoints' steps
        self.trackio.log({**values, "train/global_step": step}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class _Wandb:
    def __init__(self, stage: Path, name: str, project: str) -> None:
        import wandb

        self.wandb = wandb
        record = tracking.read_record(stage) or {}
        run_id = record.get("wandb_run_id")
        self.run = wandb.init(
            project=os.getenv("WANDB_PROJECT", "huggingface"),
            name=name,
            group=record.get("group") or os.getenv("WANDB_RUN_GROUP") or project,
            id=run_id,
            resume="allow" if run_id else None,
        )
        # the training run's x-axis: its steps are already past the checkpoints' (wandb's own
        # step only grows), so the drift reads are placed by this metric instead
        self.run.define_metric("train/global_step")
        self.run.define_metric("drift/*", step_metric="train/global_step")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, "train/global_step": step})

    def close(self) -> None:
        self.run.finish()


WRITERS = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb}


def log_drift(out: str | os.PathLike, report_to: str, log=print, force: bool = False) -> dict:
    """Log each EM run's drift reads of the finished main job in `out` to `report_to`, one tracker
    run per EM run; returns `{run name: {"steps", "tags"}}`. Skipped (returns {}) when this
    analysis was already logged to this tracker, unless `force`."""
    tracking.check_tracker(report_to)
    if report_to == "none":
        return {}
    out = Path(out)
    analysis = out / "analysis"
    metrics = json.loads((analysis / "metrics.json").read_text())
    analysis_id = json.loads((analysis / "done.json").read_text()).get("run_id")
    marker = analysis / tracking.RECORD
    logged = json.loads(marker.read_text()) if marker.is_file() else {}
    if not force and logged.get(report_to, {}).get("analysis_run_id") == analysis_id:
        return {}
    result: dict = {}
    for run, folder in RUNS.items():
        if run not in metrics["drift"]["runs"]:
            continue
        stage = em_stage(out / folder)
        record = tracking.read_record(stage) or {}
        name = record.get("run_name") or tracking.run_name(stage, out)
        project = record.get("project") or tracking.experiment_name(out)
        scalars = drift_scalars(metrics, run, out)
        writer = WRITERS[report_to](stage, name, project)
        try:
            for step in sorted(scalars):
                writer.log(step, scalars[step])
        finally:
            writer.close()
        result[name] = {"steps": sorted(scalars), "tags": sorted({t for v in scalars.values() for t in v})}
    logged[report_to] = {"analysis_run_id": analysis_id, "runs": result}
    atomic_write_json(marker, logged)
    log(
        f"{report_to}: drift reads of {len(result)} EM runs logged at layer {metrics['drift']['best_layer']}"
        + (
            f" (event files in {out}/<em run>/em/{tracking.TENSORBOARD_DIR}/)"
            if report_to == "tensorboard"
            else ""
        )
    )
    return result


def read_scalars(folder: str | os.PathLike) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files in `folder`, `{tag: {step: value}}` (a check
    that the training loss and the drift reads landed in one run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars
