"""Checks of the training inputs (datasets, preference data, contrast responses, earlier runs),
made before any model loads; failures are `anchor.inputs.InputError`s naming the flag and the fix.
`check_persona_inputs` and `check_em_inputs` are everything train_persona.py and finetune_em.py
are given, in one call each."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anchor.constitution import load_persona
from anchor.inputs import (
    InputError,
    check_adapter,
    check_model_spec,
    check_output_dir,
    check_persona,
    check_positive,
)
from anchor.store import read_jsonl
from probes.contrast import ContrastItem
from train.data import NAMES, load_em_dataset

if TYPE_CHECKING:
    from train.em import EMRunConfig
    from train.persona import PersonaRunConfig

CHAT_FORMAT = (
    'a chat JSONL: one {"messages": [...]} per line, ending on the assistant turn, or a hub dataset '
    "hf:OWNER/NAME[:SPLIT] with a messages column"
)


def check_dataset(name_or_path: str, flag: str = "--dataset") -> int:
    """Every row of a shipped dataset or a user's chat JSONL is valid; returns the row count."""
    try:
        return len(load_em_dataset(name_or_path))
    except InputError:  # already names the flag and the value (a hub id not in the cache)
        raise
    except (OSError, ValueError) as err:
        raise InputError(
            f"{flag} {name_or_path!r}: {err}. Give one of {', '.join(NAMES)} or {CHAT_FORMAT}"
        ) from None


def check_preference_data(path: str, flag: str = "--dpo-data") -> None:
    from train.distill import load_preference_data

    try:
        load_preference_data(path)
    except (OSError, ValueError) as err:
        raise InputError(
            f"{flag} {path!r}: {err}. Give a JSONL of TRL conversational preference rows "
            '({"prompt": [...], "chosen": [...], "rejected": [...]})'
        ) from None


def check_contrast_items(path: str, flag: str = "--contrast") -> list[ContrastItem]:
    """Contrast responses as fit_directions.py writes them (`contrast.jsonl`)."""
    fields = set(ContrastItem.__dataclass_fields__)
    items = []
    try:
        for where, row in read_jsonl(path):
            if not isinstance(row, dict) or set(row) != fields:
                raise ValueError(
                    f"{where}: expected an object with exactly the fields {', '.join(sorted(fields))}"
                )
            items.append(ContrastItem(**row))
    except (OSError, ValueError) as err:
        raise InputError(
            f"{flag} {path!r}: {err}. Give the contrast.jsonl that fit_directions.py or track_drift.py wrote"
        ) from None
    if not items:
        raise InputError(f"{flag} {path!r}: no rows; give the contrast.jsonl that fit_directions.py wrote")
    return items


def _same_persona(a: str, b: str) -> bool:
    """Same name or path, or constitutions with the same traits (one may be a copy of the other)."""
    if a == b:
        return True
    try:
        return [t.trait for t in load_persona(a).traits] == [t.trait for t in load_persona(b).traits]
    except (KeyError, OSError, ValueError):
        return False


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_persona_run(
    path: str, persona: str | None = None, model: str | None = None, flag: str = "--persona-run"
) -> None:
    """A finished train_persona.py run (both stages done, the persona model on disk), trained on
    this persona and model when they are given."""
    run = Path(path)
    how = "give a directory train_persona.py finished, or leave the flag out to train the persona"
    if not (run / "config.json").is_file():
        raise InputError(f"{flag} {path!r}: no config.json there, so it is not a train_persona.py run; {how}")
    missing = [
        p
        for p in ("sft/done.json", "dpo/merged/config.json", "sft/adapter/adapter_config.json")
        if not (run / p).is_file()
    ]
    if missing:
        raise InputError(
            f"{flag} {path!r}: the run is not finished ({', '.join(missing)} missing); rerun train_persona.py on it, or {how}"
        )
    config = json.loads((run / "config.json").read_text())
    if persona is not None and not _same_persona(str(config.get("persona")), persona):
        raise InputError(
            f"{flag} {path!r}: that run trained persona {config.get('persona')!r}, not {persona!r}; give a run of "
            f"{persona!r} or leave the flag out"
        )
    if model is not None and not _same_model(str(config.get("model")), model):
        raise InputError(
            f"{flag} {path!r}: that run trained model {config.get('model')!r}, not {model!r}; give a run on "
            f"{model!r} or pass --model {config.get('model')}"
        )


def check_persona_inputs(config: PersonaRunConfig, out: str | os.PathLike) -> None:
    """Everything a character-training run is given (train_persona.py, and track_drift.py's first stage)."""
    from train import distill

    check_persona(config.persona)
    check_model_spec(config.model)
    if config.teacher is not None:
        check_model_spec(config.teacher, "--teacher")
    if config.preset not in distill.PRESETS:
        raise InputError(f"--preset {config.preset!r}: unknown; choose from {', '.join(distill.PRESETS)}")
    if config.dpo_data is not None:
        check_preference_data(config.dpo_data)
    if config.generic_prompts is not None:
        from anchor.prompt_pool import load_prompts

        try:
            load_prompts(config.generic_prompts)
        except (OSError, ValueError) as err:
            raise InputError(f"--generic-prompts {config.generic_prompts!r}: {err}") from None
    check_output_dir(out)


def check_em_inputs(
    config: EMRunConfig,
    out: str | os.PathLike,
    contrast: str | None = None,
    persona_run: str | None = None,
    flags: Sequence[str] = ("--dataset", "--model"),
) -> None:
    """Everything an EM run is given (finetune_em.py)."""
    try:
        config.training()
    except ValueError as err:
        raise InputError(f"--preset/--rank: {err}") from None
    check_positive(config.record_every, "--record-every")
    check_positive(config.max_rows, "--max-rows")
    check_dataset(config.dataset, flags[0])
    if persona_run is not None:
        check_persona_run(persona_run)
    else:
        check_model_spec(config.model, flags[1])
        if config.adapter is not None:
            check_adapter(config.adapter)
    if contrast is not None:
        check_contrast_items(contrast)
    check_output_dir(out)
