"""Artefacts other people published, brought in by path or hub id: a persona LoRA (as Open Character
Training publishes one per persona), a folder of EM checkpoints (as the Model Organisms release lays
them out), a dataset on the hub. Each resolves to a local folder plus an identity that enters the
stage keys, so a different revision or an edited file reruns what read it.

Offline, a hub id that is not in the local cache fails at once, naming the id and the cache path:
nothing is downloaded in tests or the default run, and nothing is written before the check.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from anchor.inputs import InputError, check_adapter
from anchor.stages import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT = re.compile(r"^(?:checkpoint|step)-(\d+)$")


@dataclass(frozen=True)
class Published:
    """A published artefact as read: where it is here and what it is (its identity)."""

    spec: str  # what the user gave
    path: Path  # a local folder
    identity: str  # "hub:<id>@<revision>" or "files:<sha256 of every file>"


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def folder_identity(folder: Path) -> str:
    """sha256 over every file's relative path and content hash, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{sha256_file(path)}\n".encode())
    return f"files:{digest.hexdigest()}"


def resolve_published(spec: str, flag: str, repo_type: str = "model") -> Published:
    """`spec` as a local folder, else as a hub id: from the local cache, or downloaded when online.
    Errors name the flag, the id and the cache path."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return Published(spec, path, folder_identity(path))
    if path.exists():
        raise InputError(f"{flag} {spec!r}: is a file; give a folder or a hub id ('owner/name')")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise InputError(f"{flag} {spec!r}: no such folder, and not a hub id ('owner/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = Path(snapshot_download(spec, repo_type=repo_type, local_files_only=True))
    except LocalEntryNotFoundError:
        if offline():
            raise InputError(
                f"{flag} {spec!r}: not in the Hugging Face cache ({hub_cache()}) and the hub is offline "
                "(HF_HUB_OFFLINE); download it first (hf download) or give a local folder"
            ) from None
        try:
            local = Path(snapshot_download(spec, repo_type=repo_type))
        except Exception as err:  # no network, no such repo, no access: all end here, named
            raise InputError(
                f"{flag} {spec!r}: not in the Hugging Face cache ({hub_cache()}) and the download failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); download it first "
                "(hf download) or give a local folder"
            ) from None
    return Published(spec, local, f"hub:{spec}@{local.name}")  # snapshots/<revision>


def checkpoint_folders(folder: Path, flag: str) -> dict[int, Path]:
    """step -> adapter folder, from `checkpoint-N/` or `step-N/` subfolders (trainers' and the Model
    Organisms release's layouts, and this project's own `checkpoints/`)."""
    found: dict[int, Path] = {}
    for child in sorted(folder.iterdir()):
        match = _CHECKPOINT.match(child.name)
        if match is None or not child.is_dir():
            continue
        check_adapter(child, flag)
        step = int(match.group(1))
        if step in found:
            raise InputError(
                f"{flag} {str(folder)!r}: two checkpoints of step {step} ({found[step].name}, {child.name})"
            )
        found[step] = child
    if not found:
        raise InputError(
            f"{flag} {str(folder)!r}: no checkpoint-N/ or step-N/ folders of PEFT adapters there"
        )
    return found
