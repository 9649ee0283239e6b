"""Checks of a run's anchor-level inputs, made before any model loads or any folder is created.

A bad input found after minutes of training wastes the minutes and leaves a half-written run; so
every entry point checks everything it was given first, and each failure is one `InputError`
naming the flag, the value, what is wrong and how to fix it. The checks are cheap: files are
parsed, model specs resolved without loading weights. Datasets and runs are checked in
`train/inputs.py`, judges and question files in `analysis/inputs.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from anchor.constitution import ConstitutionError, ContrastPair, Persona, load_contrast, load_persona
from anchor.models import DEFAULT_CACHE_NAME, DEFAULT_SPEC, cache_dir, default_gguf_path
from anchor.specs import SERVED

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
CONSTITUTION_FORMAT = (
    "a constitution file in the Open Character Training format (a JSON array of "
    '{"trait": ..., "questions": [...]} objects, or the expanded JSONL)'
)


class InputError(ValueError):
    """An input that cannot work, found before any work; the message says which and how to fix it."""


def check_persona(name_or_path: str, flag: str = "--persona") -> Persona:
    try:
        return load_persona(name_or_path)
    except KeyError as err:
        raise InputError(f"{flag}: {err.args[0]}; or give the path of {CONSTITUTION_FORMAT}") from None
    except (FileNotFoundError, ConstitutionError) as err:
        raise InputError(f"{flag} {name_or_path!r}: {err}. Give {CONSTITUTION_FORMAT}") from None


def check_contrast_file(path: str | os.PathLike, flag: str = "--contrast") -> list[ContrastPair]:
    try:
        return load_contrast(path)
    except (FileNotFoundError, ConstitutionError) as err:
        raise InputError(
            f'{flag} {str(path)!r}: {err}. Give a JSON file {{"elicit": [...], "suppress": [...]}} of '
            "system prompts that draw the persona out and suppress it, paired by position"
        ) from None


def check_model_spec(spec: str, flag: str = "--model") -> None:
    """`default` (its package or cached copy present), a local model directory (config and
    tokenizer files present) or a hub name ('org/name'). Nothing is downloaded or loaded."""
    if spec.startswith(SERVED):
        if flag != "--teacher":
            raise InputError(f"{flag} {spec!r}: a server model can teach (--teacher), not be trained or read")
        if not spec.removeprefix(SERVED) or not os.environ.get("OPENAI_BASE_URL"):
            raise InputError(
                f"{flag} {spec!r}: needs a model name after 'openai:' and OPENAI_BASE_URL set to the server "
                "(e.g. http://localhost:8000/v1 for `vllm serve`)"
            )
        return
    if spec == DEFAULT_SPEC:
        if (cache_dir() / DEFAULT_CACHE_NAME / "config.json").is_file():
            return
        try:
            default_gguf_path()
        except (ModuleNotFoundError, FileNotFoundError) as err:
            raise InputError(f"{flag} {spec!r}: {err}") from None
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(
                f"{flag} {spec!r}: no config.json there, so it is not a model directory; give a directory "
                "written by save_pretrained, a hub name such as 'Qwen/Qwen2.5-7B-Instruct', or 'default'"
            )
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise InputError(
                f"{flag} {spec!r}: the model directory has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                "save the tokenizer there too (tokenizer.save_pretrained)"
            )
        return
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or not all(spec.split("/")):
        raise InputError(
            f"{flag} {spec!r}: no such directory, and not a hub name ('org/name'); give 'default', a local "
            "model directory or a hub name such as 'Qwen/Qwen2.5-7B-Instruct'"
        )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise InputError(
                f"{flag} {spec!r}: HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache; "
                "download it first (huggingface-cli download) or unset HF_HUB_OFFLINE"
            )


def check_adapter(path: str | os.PathLike, flag: str = "--adapter") -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise InputError(
            f"{flag} {str(path)!r}: no adapter_config.json there, so it is not a PEFT adapter directory; "
            "give the folder a PEFT model was saved to (model.save_pretrained)"
        )


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """The directory exists and is writable, or can be created: nothing is created here."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {str(path)!r}: exists and is not a directory; choose another output path")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"{flag} {str(path)!r}: {existing} is a file, so the directory cannot be created there; choose "
            "another output path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {str(path)!r}: {existing} is not writable by this user; choose an output path you can "
            "write to, or fix its permissions"
        )


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{flag} {value}: must be 1 or more (leave it out for the default)")


def check_em_run(path: str, flag: str = "--em-run") -> None:
    """A finished EM run (finetune_em.py's folder, or an em_* run of the main job)."""
    from anchor.runs import em_adapter, read_em_run

    try:
        run = read_em_run(path)
    except (FileNotFoundError, KeyError, ValueError):
        run = None
    if run is None or not (em_adapter(path) / "adapter_config.json").is_file():
        raise InputError(
            f"{flag} {path!r}: not a finished finetune_em.py run (no em/done.json and em/adapter); give the "
            "directory finetune_em.py printed, or rerun it there"
        )
    check_model_spec(run.get("model", DEFAULT_SPEC), f"{flag} {path!r}: its base model")
