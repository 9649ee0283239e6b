"""Checks of everything an experiment is given (track_drift.py, defences.py, steer.py,
diversity_sweep.py), in one call per entry point, before any model loads or any folder is made;
each failure is one `anchor.inputs.InputError` naming the flag, the value and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.inputs import check_judge
from anchor.constitution import Persona
from anchor.em_questions import QUESTION_SETS
from anchor.inputs import (
    InputError,
    check_adapter,
    check_contrast_file,
    check_model_spec,
    check_output_dir,
    check_persona,
    check_positive,
)
from anchor.published import checkpoint_folders, resolve_published
from anchor.questions import training_pool
from probes.contrast import ANSWER_SOURCES, load_contrast_set
from train.inputs import check_dataset, check_persona_run

if TYPE_CHECKING:
    from analysis.experiments.options import TrackConfig


def check_track_inputs(config: TrackConfig, out: str | os.PathLike) -> Persona:
    """Everything the main job is given; returns the persona."""
    persona = check_persona(config.persona)
    if config.contrast is not None:
        check_contrast_file(config.contrast)
    check_model_spec(config.model)
    if config.teacher is not None:
        check_model_spec(config.teacher, "--teacher")
    check_judge(config.judge)
    check_dataset(config.em_dataset, "--em-dataset")
    check_dataset(config.control, "--control")
    check_positive(config.em_rows, "--em-rows")
    check_positive(config.checkpoint_every, "--checkpoint-every")
    check_positive(config.contrast_questions_per_trait, "--contrast-questions-per-trait")
    check_positive(config.contrast_pairs_per_question, "--contrast-pairs-per-question")
    if config.probe_questions not in QUESTION_SETS:
        raise InputError(
            f"probe_questions {config.probe_questions!r}: choose from {', '.join(QUESTION_SETS)}"
        )
    questions = {q for t in persona.traits for q in t.questions[: config.contrast_questions_per_trait]}
    if len(questions) < 2:
        raise InputError(
            f"--persona {config.persona!r}: {len(questions)} contrast question(s); held-out probe accuracy needs "
            "at least 2, so give the constitution more traits or questions"
        )
    check_contrast_answers(config)
    if config.persona_run is not None:
        check_persona_run(config.persona_run, config.persona, config.model)
    if config.persona_adapter is not None:
        if config.persona_run is not None:
            raise InputError("--persona-adapter and --persona-run both give the persona model; give one")
        adapter = resolve_published(config.persona_adapter, "--persona-adapter")
        check_adapter(adapter.path, "--persona-adapter")
    from analysis.experiments.options import EM_CELLS

    for cell, spec in (config.em_checkpoints or {}).items():
        if cell not in EM_CELLS:
            raise InputError(
                f"--em-checkpoints {cell}={spec}: unknown cell {cell!r}; choose from {', '.join(EM_CELLS)}"
            )
        checkpoint_folders(resolve_published(spec, "--em-checkpoints").path, "--em-checkpoints")
    check_output_dir(out)
    return persona


def check_contrast_answers(config: TrackConfig) -> None:
    """The contrast answers the run will read, loaded once here so a bad file stops the run
    before any training, naming the file and line."""
    from analysis.experiments.track import contrast_answers_file

    if config.contrast_answers not in ANSWER_SOURCES:
        raise InputError(
            f"--contrast-answers {config.contrast_answers!r}: choose from {', '.join(ANSWER_SOURCES)}"
        )
    if config.contrast_answers == "written" and config.contrast is not None:
        raise InputError(
            "--contrast-answers written and --contrast: written answers come with the prompts they illustrate; "
            "pairs of your own are sampled under (--contrast-answers sampled)"
        )
    given = config.contrast_set is not None
    path = Path(config.contrast_set) if given else contrast_answers_file(config)
    if path is not None:
        try:
            load_contrast_set(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{'--contrast-set' if given else '--contrast-answers'}: {err}") from None


def check_track_run(path: str, flag: str = "--run") -> TrackConfig:
    """A finished track_drift.py run; returns its config."""
    from analysis.experiments.options import TrackConfig

    run = Path(path)
    needed = [
        "config.json",
        "analysis/done.json",
        "analysis/directions.safetensors",
        "analysis/summary.json",
        "contrast/contrast.jsonl",
    ]
    missing = [p for p in needed if not (run / p).is_file()]
    if missing:
        raise InputError(
            f"{flag} {path!r}: not a finished track_drift.py run ({', '.join(missing)} missing); finish it with "
            "track_drift.py --out on that directory, or give another run"
        )
    try:
        return TrackConfig(**json.loads((run / "config.json").read_text()))
    except (TypeError, ValueError) as err:
        raise InputError(f"{flag} {path!r}: config.json is not a track_drift.py config ({err})") from None


def check_steer_inputs(
    run: str, judge: str | None, layers: list[int] | None, read_layer: int | None, out: str | os.PathLike
) -> None:
    """Everything steer.py is given."""
    from probes.directions import Directions

    config = check_track_run(run)
    check_judge(judge or config.judge, flag="--eval-judge" if judge else f"judge (from {run}/config.json)")
    known = Directions.load(Path(run) / "analysis" / "directions.safetensors").layers
    for layer in [*(layers or []), *([] if read_layer is None else [read_layer])]:
        if layer not in known:
            raise InputError(
                f"--layers/--read-layer {layer}: the run's directions cover layers {known[0]}..{known[-1]}"
            )
    check_output_dir(out)


def check_sweep_inputs(
    persona: str, model: str, em_dataset: str, judge: str, questions: int, out: str | os.PathLike
) -> Persona:
    """Everything diversity_sweep.py is given; returns the persona."""
    loaded = check_persona(persona)
    check_model_spec(model)
    check_dataset(em_dataset, "--em-dataset")
    check_judge(judge)
    pool, _ = training_pool(loaded.traits)
    if not 2 <= questions <= len(pool):
        raise InputError(
            f"--questions {questions}: the persona's pool has {len(pool)} training questions (each trait's last "
            "is held out); ask for 2 to that many, or expand the constitution with expand_questions.py"
        )
    check_output_dir(out)
    return loaded
