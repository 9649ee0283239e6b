"""Resumable stages of a run directory.

A stage is complete when its folder holds a `done.json` whose key matches the stage's config: then
it is skipped. Anything else in the folder is the debris of an interrupted attempt and is removed
before the stage runs again, so a killed stage reruns cleanly.

Under `accelerate launch` every rank runs the stage's body (the training), but only rank 0
clears the folder and writes `done.json`; the others wait for it at barriers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anchor.store import atomic_write_json
from train.distributed import barrier, is_main

T = TypeVar("T")


def config_key(config: object) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed(directory: Path, config: dict) -> dict | None:
    """The stage's `done.json` contents if it is complete with this config, else None."""
    marker = directory / "done.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == config_key(config):
            return done
    return None


def stage_identity(directory: Path) -> str:
    """What a downstream stage keys on to depend on this finished stage: its config key and the id
    of the execution that produced it, so rerunning it (even with the same config) reruns what
    depends on it."""
    done = json.loads((directory / "done.json").read_text())
    return f"{done['key']}/{done.get('run_id', '')}"


def run_stage(directory: Path, config: dict, body: Callable[[Path], dict | None], log=print) -> dict:
    """Run `body(directory)` unless the stage is already complete with this config; returns the
    stage's `done.json` contents (the body's returned summary plus key and timing)."""
    done = completed(directory, config)
    barrier()  # every rank has decided before rank 0 may clear the folder
    if done is not None:
        log(f"stage {directory.name}: complete, skipped")
        return done
    if is_main():
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        log(f"stage {directory.name}: running")
    barrier()
    start = time.perf_counter()
    summary = body(directory) or {}
    done = {
        "key": config_key(config),
        "run_id": uuid.uuid4().hex,  # this execution: a rerun with the same config is a new upstream
        "config": config,
        "seconds": round(time.perf_counter() - start, 1),
        **summary,
    }
    if is_main():
        atomic_write_json(directory / "done.json", done)
    barrier()
    return done
