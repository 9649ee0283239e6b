"""Resumable stages of a run directory.

A stage is complete when its folder holds a `done.json` whose key matches the stage's config: then
it is skipped. Anything else in the folder is the debris of an interrupted attempt and is removed
before the stage runs again, so a killed stage reruns cleanly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anchor.store import atomic_write_json

T = TypeVar("T")


def config_key(config: object) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(directory: Path, config: dict, body: Callable[[Path], dict | None], log=print) -> dict:
    """Run `body(directory)` unless the stage is already complete with this config; returns the
    stage's `done.json` contents (the body's returned summary plus key and timing)."""
    marker = directory / "done.json"
    key = config_key(config)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            log(f"stage {directory.name}: complete, skipped")
            return done
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    log(f"stage {directory.name}: running")
    start = time.perf_counter()
    summary = body(directory) or {}
    done = {"key": key, "config": config, "seconds": round(time.perf_counter() - start, 1), **summary}
    atomic_write_json(marker, done)
    return done
