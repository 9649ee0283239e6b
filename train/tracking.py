"""Experiment tracking of the training stages: `--report-to {none,trackio,wandb,tensorboard}`.

The choice never changes a result, so it never enters a stage's key: a command sets it for its
process with `reporting(tracker, run_folder)`, which puts it in environment variables, so the
training processes `train.launch` starts under `accelerate launch` inherit it; `trainer_arguments`
(train/lora.py) reads it back when it builds a trainer's arguments. Per training stage:

    <stage>/tensorboard/     TensorBoard event files (training loss, learning rate, ...); the main
                             job adds its drift reads there afterwards (`analysis.experiments.tracking`)
    <stage>/tracking.json    tracker, run name, project (and the wandb run id, for the drift reads)

The tracker run is named `<experiment>/<stage>` (e.g. `sycophancy-default-insecure-s0/em_persona/em`),
the experiment being the run folder's name; runs are grouped by experiment: trackio's project,
wandb's group (`WANDB_RUN_GROUP`, unless already set). TensorBoard and trackio write locally (trackio
under `TRACKIO_DIR`, default `~/.cache/huggingface/trackio`); wandb honours `WANDB_MODE=offline`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

TRACKERS = ("none", "trackio", "wandb", "tensorboard")
REPORT_TO_ENV = "ANCHOR_REPORT_TO"  # the tracker, for this process and the ones it launches
ROOT_ENV = "ANCHOR_TRACKING_ROOT"  # the run folder: its name is the experiment's
TENSORBOARD_DIR = "tensorboard"
RECORD = "tracking.json"
_SEED_FOLDER = re.compile(r"s\d+$")


class TrackerMissing(ImportError):
    pass


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_tracker(tracker: str) -> str:
    """`tracker` if it is known and its package is installed; else an error naming the package."""
    if tracker not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; choose from {', '.join(TRACKERS)}")
    if tracker != "none" and not _installed(tracker):
        raise TrackerMissing(
            f"--report-to {tracker} needs the '{tracker}' package, which is not installed: "
            f"pip install {tracker} (or pip install 'identity-anchor[track]')"
        )
    return tracker


def _tracker_argument(value: str) -> str:
    try:
        return check_tracker(value)
    except (ValueError, TrackerMissing) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--report-to`, the same on every command that trains (no effect on results)."""
    parser.add_argument(
        "--report-to",
        type=_tracker_argument,
        choices=TRACKERS,
        default="none",
        help="log the training losses to this tracker, one run per training stage named "
        "<run folder>/<stage> (track_drift.py and defences.py also log each EM run's drift reads at "
        "its checkpoints' steps): tensorboard writes event files in each stage's tensorboard/ folder, "
        "trackio writes locally, wandb honours WANDB_MODE=offline (default: none)",
    )


@contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) these environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def reporting(tracker: str, root: str | os.PathLike | None) -> Iterator[None]:
    """Report the training stages run in this block (and in the processes it launches) to
    `tracker`; `root` is the run folder, whose name is the experiment's."""
    check_tracker(tracker)
    values: dict[str, str | None] = {
        REPORT_TO_ENV: tracker,
        ROOT_ENV: str(Path(root).resolve()) if root is not None else None,
    }
    if tracker == "wandb" and root is not None and "WANDB_RUN_GROUP" not in os.environ:
        values["WANDB_RUN_GROUP"] = experiment_name(root)
    with _environ(values):
        yield


def report_to() -> str:
    """The tracker chosen for this process ("none" unless a command set one)."""
    return check_tracker(os.environ.get(REPORT_TO_ENV) or "none")


def tracking_root() -> Path | None:
    root = os.environ.get(ROOT_ENV)
    return Path(root) if root else None


def experiment_name(root: str | os.PathLike) -> str:
    """The run folder's name; a seed's folder (`<pooled>/s1`) keeps its parent's name too."""
    root = Path(root).resolve()
    return f"{root.parent.name}-{root.name}" if _SEED_FOLDER.fullmatch(root.name) else root.name


def stage_label(stage: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The stage's path inside the run folder (e.g. `em_persona/em`); a stage outside it (the
    shared character-training run) by its path beside it (`persona/<name>/dpo`)."""
    stage = Path(stage).resolve()
    if root is not None:
        root = Path(root).resolve()
        for base in (root, root.parent):
            if stage.is_relative_to(base):
                return stage.relative_to(base).as_posix()
    return f"{stage.parent.name}/{stage.name}"


def run_name(stage: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """`<experiment>/<stage>`: the tracker run of one training stage."""
    root = root if root is not None else tracking_root()
    if root is None:
        return f"{Path(stage).resolve().parent.name}/{Path(stage).name}"
    return f"{experiment_name(root)}/{stage_label(stage, root)}"


def project_name(stage: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Where a stage's runs are grouped: the experiment (trackio's project, wandb's group)."""
    root = root if root is not None else tracking_root()
    return experiment_name(root) if root is not None else Path(stage).resolve().parent.name


def log_dir(stage: str | os.PathLike) -> Path:
    """A stage's TensorBoard folder: training losses and (EM runs of the main job) drift reads."""
    return Path(stage) / TENSORBOARD_DIR


def trainer_kwargs(stage: str | os.PathLike) -> dict:
    """TRL/transformers arguments for the chosen tracker: `report_to` (an empty list for none), the
    run's name and project."""
    tracker = report_to()
    if tracker == "none":
        return {"report_to": []}
    kwargs = {"report_to": [tracker], "run_name": run_name(stage)}
    from dataclasses import fields

    from transformers import TrainingArguments

    if "project" in {f.name for f in fields(TrainingArguments)}:  # trackio's project (transformers >= 5)
        kwargs["project"] = project_name(stage)
    return kwargs


@contextmanager
def training_run(stage: str | os.PathLike) -> Iterator[None]:
    """Around one trainer's construction and training: TensorBoard events go to the stage's
    `tensorboard/` folder, a wandb run ends with the stage (the next stage is a run of its own), and
    the stage's `tracking.json` records where its run is."""
    tracker = report_to()
    if tracker == "none":
        yield
        return
    stage = Path(stage)
    record: dict = {
        "report_to": tracker,
        "run_name": run_name(stage),
        "project": project_name(stage),
        "root": str(tracking_root()) if tracking_root() is not None else None,
    }
    env: dict[str, str | None] = {}
    if tracker == "tensorboard":
        env["TENSORBOARD_LOGGING_DIR"] = str(log_dir(stage).resolve())
        record["log_dir"] = TENSORBOARD_DIR
    try:
        with _environ(env):
            yield
    finally:
        if tracker == "wandb":
            import wandb

            if wandb.run is not None:
                record["wandb_run_id"] = wandb.run.id
                record["group"] = wandb.run.group
                wandb.finish()
        from anchor.distributed import is_main
        from anchor.store import atomic_write_json

        if is_main() and stage.is_dir():
            atomic_write_json(stage / RECORD, record)


def read_record(stage: str | os.PathLike) -> dict | None:
    """A stage's `tracking.json`, if it was trained with a tracker."""
    import json

    path = Path(stage) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None
