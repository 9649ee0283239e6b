"""Checks of the analysis inputs (judges, question files) and, in one call, of everything eval_em.py
is given. They run before any model loads or any folder is made; each failure is one
`anchor.inputs.InputError` naming the flag, the value and the fix. The experiments' checks
(track_drift.py, steer.py, diversity_sweep.py) are in `analysis.experiments.inputs`."""

from __future__ import annotations

import os
from pathlib import Path

from anchor.em_questions import QUESTION_SETS, question_set
from anchor.inputs import InputError, check_adapter, check_em_run, check_model_spec, check_output_dir
from anchor.specs import JUDGE_FORMS, JudgeSpec


def check_judge(
    spec: str, base_url: str | None = None, api_key: str | None = None, flag: str = "--judge"
) -> None:
    """`hf:` a resolvable model spec; `openai:` a server URL and a key (from the arguments or
    OPENAI_BASE_URL / OPENAI_API_KEY); `probe:` a readable directions file; `distilled:` the shipped
    judge or a folder train_judge.py wrote."""
    try:
        parsed = JudgeSpec(spec)
    except ValueError:
        raise InputError(f"{flag} {spec!r}: use {JUDGE_FORMS}") from None
    kind, target = parsed.kind, parsed.target
    if kind == "hf":
        check_model_spec(target, f"{flag} {spec!r}: model")
    elif kind == "distilled":  # its folder, with a readable card and heads
        from analysis.distilled_judge import WEIGHTS, Heads, load_card, resolve_dir

        try:
            folder = resolve_dir(target)
            load_card(folder)
            Heads.load(folder / WEIGHTS)
        except (FileNotFoundError, ValueError) as err:
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
