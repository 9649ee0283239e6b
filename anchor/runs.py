"""Where a training stage keeps what it wrote, so every reader finds it in one way.

Everything a stage writes lives in its own folder (`anchor.stages`), recorded checkpoints included:

    <stage>/done.json                the stage's key, inputs and summary (`recorded`: the steps read)
    <stage>/adapter/                 the final adapter
    <stage>/activations/             ActivationStore: <stage name>/step-XXXXX/<probe set>
    <stage>/checkpoints/step-XXXXX/  the adapter at each recorded step

An EM run's stage is `<run>/em`; a persona run's are `<run>/dpo` and `<run>/sft`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from anchor.store import ActivationStore

EM = "em"
CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"step-(\d+)$")


def stage_store(stage: str | Path) -> ActivationStore:
    return ActivationStore(Path(stage) / "activations")


def checkpoint_dir(stage: str | Path, step: int) -> Path:
    return Path(stage) / CHECKPOINTS / f"step-{step:05d}"


def em_stage(run: str | Path) -> Path:
    return Path(run) / EM


def em_store(run: str | Path) -> ActivationStore:
    """The activations an EM run recorded at its checkpoints."""
    return stage_store(em_stage(run))


def checkpoints(run: str | Path) -> list[str]:
    """The recorded EM checkpoints of a run, in step order (`em/step-00000`, ...)."""
    marker = em_stage(run) / "done.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{run}: the EM run is not finished (no {EM}/done.json)")
    done = json.loads(marker.read_text())
    return [f"{EM}/step-{step:05d}" for step in sorted(done["recorded"])]


def step_of(checkpoint: str) -> int:
    match = _STEP.search(checkpoint)
    if match is None:
        raise ValueError(f"{checkpoint!r} is not a checkpoint name (…/step-XXXXX)")
    return int(match.group(1))


def em_adapter(run: str | Path, checkpoint: str | None = None) -> Path:
    """The EM run's final adapter, or the one saved at `checkpoint` (e.g. `em/step-00008`)."""
    stage = em_stage(run)
    return stage / "adapter" if checkpoint is None else checkpoint_dir(stage, step_of(checkpoint))


def read_em_run(run: str | Path) -> dict:
    """The recipe a finished EM run was trained with, as its stage declared it (`train.em.EMRunConfig`
    fields: model, adapter, dataset, ...)."""
    marker = em_stage(run) / "done.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{run}: the EM run is not finished (no {EM}/done.json)")
    return json.loads(marker.read_text())["inputs"]["run"]


def load_em_model(run: str | Path, checkpoint: str | None = None):
    """The EM-trained model of a run: its starting model with the final EM adapter (or the adapter
    saved at `checkpoint`, e.g. `em/step-00008`) on top."""
    from peft import PeftModel

    from anchor.models import load_starting_model

    recipe = read_em_run(run)
    adapter = em_adapter(run, checkpoint)
    if not adapter.is_dir():
        raise FileNotFoundError(f"{adapter}: no EM adapter (is the run finished?)")
    model, tokenizer = load_starting_model(recipe["model"], recipe["adapter"])
    return PeftModel.from_pretrained(model, adapter).eval(), tokenizer
