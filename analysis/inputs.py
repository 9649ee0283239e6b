"""Checks of the analysis inputs (judges, question files, finished runs) and, in one call per
entry point, of everything track_drift.py, eval_em.py, steer.py and diversity_sweep.py are given.
They run before any model loads or any folder is made; each failure is one
`anchor.inputs.InputError` naming the flag, the value and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from anchor.constitution import Persona
from anchor.em_questions import QUESTION_SETS, question_set
from anchor.inputs import (
    InputError,
    check_adapter,
    check_contrast_file,
    check_model_spec,
    check_output_dir,
    check_persona,
    check_positive,
)
from anchor.questions import training_pool
from train.inputs import check_dataset, check_em_run, check_persona_run

if TYPE_CHECKING:
    from analysis.track import TrackConfig

JUDGE_KINDS = "hf:<model spec>, openai:<model>, probe:<directions file> or distilled:default|<folder>"


def check_judge(
    spec: str, base_url: str | None = None, api_key: str | None = None, flag: str = "--judge"
) -> None:
    """`hf:` a resolvable model spec; `openai:` a server URL and a key (from the arguments or
    OPENAI_BASE_URL / OPENAI_API_KEY); `probe:` a readable directions file; `distilled:` the shipped
    judge or a folder train_judge.py wrote."""
    kind, _, target = spec.partition(":")
    if kind not in ("hf", "openai", "probe", "distilled") or not target:
        raise InputError(f"{flag} {spec!r}: use {JUDGE_KINDS}")
    if kind == "hf":
        check_model_spec(target, f"{flag} {spec!r}: model")
    elif kind == "distilled":
        from analysis.distilled_judge import resolve_dir

        try:
            resolve_dir(target)
        except FileNotFoundError as err:
            raise InputError(f"{flag} {spec!r}: {err}") from None
    elif kind == "openai":
        url = base_url or os.environ.get("OPENAI_BASE_URL", "")
        if not url:
            raise InputError(
                f"{flag} {spec!r}: no server URL; pass --judge-base-url or set OPENAI_BASE_URL "
                "(e.g. http://localhost:8000/v1 for a local vLLM server)"
            )
        if not url.startswith(("http://", "https://")):
            raise InputError(
                f"{flag} {spec!r}: server URL {url!r} is not http(s)://...; fix --judge-base-url or OPENAI_BASE_URL"
            )
        if not (api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")):
            raise InputError(
                f"{flag} {spec!r}: no API key; set OPENAI_API_KEY (any non-empty value, e.g. EMPTY, for a local "
                "server that takes none)"
            )
    else:
        from probes.directions import Directions

        if not Path(target).is_file():
            raise InputError(
                f"{flag} {spec!r}: no directions file at {target}; give the directions.safetensors fit_directions.py wrote"
            )
        try:
            directions = Directions.load(target)
        except ValueError as err:
            raise InputError(f"{flag} {spec!r}: {err}") from None
        check_model_spec(
            directions.meta.get("config", {}).get("model", "default"), f"{flag} {spec!r}: its model"
        )


def check_questions(name_or_path: str, flag: str = "--questions") -> None:
    try:
        question_set(name_or_path)
    except (OSError, ValueError) as err:
        raise InputError(
            f"{flag} {name_or_path!r}: {err}. Give {' or '.join(QUESTION_SETS)}, or a YAML file in the public EM "
            "format (a list of entries with id and paraphrases)"
        ) from None


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
    if config.persona_run is not None:
        check_persona_run(config.persona_run, config.persona, config.model)
    check_output_dir(out)
    return persona


def check_eval_inputs(
    model: str,
    adapter: str | None,
    em_run: str | None,
    questions: str,
    judge: str,
    judge_base_url: str | None,
    out: str | os.PathLike,
) -> None:
    """Everything eval_em.py is given."""
    if em_run is not None:
        check_em_run(em_run)
    else:
        check_model_spec(model)
        if adapter is not None:
            check_adapter(adapter)
    check_questions(questions)
    check_judge(judge, base_url=judge_base_url)
    check_output_dir(out)


def check_track_run(path: str, flag: str = "--run") -> TrackConfig:
    """A finished track_drift.py run; returns its config."""
    from analysis.track import TrackConfig

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
    check_judge(judge or config.judge, flag="--judge" if judge else f"--judge (from {run}/config.json)")
    known = Directions.load(Path(run) / "analysis" / "directions.safetensors").layers
    for layer in [*(layers or []), *([] if read_layer is None else [read_layer])]:
        if layer not in known:
            raise InputError(
                f"--layers/--read-layer {layer}: the run's directions cover layers {known[0]}..{known[-1]}"
            )
    check_output_dir(out)


def check_sweep_inputs(
    persona: str, model: str, em_dataset: str, judge: str, questions: int, out: str | os.PathLike
) -> None:
    """Everything diversity_sweep.py is given."""
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
