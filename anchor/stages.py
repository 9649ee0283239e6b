"""Resumable stages of a run folder, each keyed by the inputs it declares.

A stage is a folder under its run folder, the inputs it reads and a body. The body is a
module-level function of (inputs, folder): it sees nothing it did not declare, so its key (a hash
of the resolved inputs) cannot leave one out. Inputs are plain JSON values, files read by content
(`FileInput`), finished stages read by identity (`StageOutput`), and objects keyed by a content hash
the caller computed (`Content`, e.g. probe conversations).

A stage is complete when its folder holds a `done.json` with the current key; then it is skipped.
A folder without `done.json` is the debris of an interrupted attempt and is cleared. A finished stage
whose inputs changed is never deleted: it is moved to `<run>/superseded/<name>@<key>` with a log line
naming the inputs that changed (old -> new), and moved back if those inputs return. `overwrite=True`
is the one way to discard it. Everything a stage writes lives in its folder, so it moves as one unit.

Under `accelerate launch` every rank runs the body (the training), but only rank 0 moves, clears and
marks folders; the others wait for it at barriers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor import timings
from anchor.distributed import barrier, is_main
from anchor.store import atomic_write_json

SUPERSEDED = "superseded"


@dataclass(frozen=True)
class FileInput:
    """A file the stage reads: the key holds its sha256, the body gets its path."""

    path: Path


@dataclass(frozen=True)
class StageOutput:
    """A finished stage this one reads: the key holds its identity (key and execution id, so a rerun
    upstream reruns this stage), the body gets its folder."""

    folder: Path


@dataclass(frozen=True)
class Content:
    """An object the body reads whose identity the caller computed from its whole content."""

    value: Any
    key: Any


class Inputs(Mapping[str, Any]):
    """A stage body's view of its resolved inputs: read-only, by key or attribute."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no input {name!r}; declared: {', '.join(self._values)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


Body = Callable[[Inputs, Path], "dict | None"]


@dataclass(frozen=True)
class Stage:
    root: Path  # the run folder: its lock covers the stage, superseded copies stay inside it
    name: str  # the stage's folder under root, e.g. "eval/base"
    inputs: Mapping[str, Any]
    body: Body

    def __post_init__(self) -> None:
        body = self.body
        if not inspect.isfunction(body) or body.__closure__ or "<" in body.__qualname__:
            raise TypeError(
                f"stage {self.name}: the body must be a module-level function of (inputs, folder), so it "
                f"reads only what the stage declares; got {getattr(body, '__qualname__', body)!r}"
            )

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_identity(folder: Path) -> str:
    """What a downstream stage keys on to depend on a finished stage: its key and the id of the
    execution that produced it."""
    marker = Path(folder) / "done.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{folder}: stage not finished (no done.json); it must run first")
    done = json.loads(marker.read_text())
    return f"{done['key']}/{done.get('run_id', '')}"


def resolve(inputs: Mapping[str, Any]) -> tuple[dict, Inputs]:
    """(the key material, the body's view) of declared inputs."""
    key, values = {}, {}
    for name, value in inputs.items():
        key[name], values[name] = _resolve(value, name)
    return key, Inputs(values)


def _resolve(value: Any, where: str) -> tuple[Any, Any]:
    if isinstance(value, FileInput):
        path = Path(value.path)
        if not path.is_file():
            raise FileNotFoundError(f"input {where}: {path}: no such file")
        return {"sha256": sha256_file(path)}, path
    if isinstance(value, StageOutput):
        return stage_identity(value.folder), Path(value.folder)
    if isinstance(value, Content):
        return value.key, value.value
    if isinstance(value, Mapping):
        pairs = {str(k): _resolve(v, f"{where}.{k}") for k, v in value.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    if isinstance(value, list | tuple):
        pairs = [_resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if value is None or isinstance(value, str | int | float | bool):
        return value, value
    raise TypeError(
        f"input {where}: {type(value).__name__} is not a declarable input; use a JSON value, "
        "FileInput, StageOutput or Content"
    )


def key_of(material: Any) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def read_done(folder: Path) -> dict | None:
    marker = Path(folder) / "done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def is_complete(stage: Stage) -> bool:
    """Whether the stage would be skipped now (False while an upstream stage is unfinished)."""
    try:
        material, _ = resolve(stage.inputs)
    except FileNotFoundError:
        return False
    done = read_done(stage.folder)
    return done is not None and done.get("key") == key_of(material)


def changed_inputs(old: Mapping | None, new: Mapping) -> list[str]:
    """'name: old -> new' for every input (flattened) that differs."""
    if old is None:
        return ["(the old stage recorded no inputs)"]
    flat_old, flat_new = _flatten(old), _flatten(new)
    return [
        f"{name}: {_short(flat_old.get(name, '(absent)'))} -> {_short(flat_new.get(name, '(absent)'))}"
        for name in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(name, "(absent)") != flat_new.get(name, "(absent)")
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def superseded_folder(stage: Stage, key: str) -> Path:
    return Path(stage.root) / SUPERSEDED / f"{stage.name.replace('/', '__')}@{key}"


def run_stage(stage: Stage, log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run the stage's body unless it is complete with its current inputs; returns its `done.json`
    contents (the body's summary plus key, inputs and timing)."""
    material, inputs = resolve(stage.inputs)
    key = key_of(material)
    folder = stage.folder
    done = read_done(folder)
    if done is not None and done.get("key") == key:
        log(f"stage {stage.name}: complete, skipped")
        return done
    kept = superseded_folder(stage, key)
    restore = read_done(kept) is not None and not overwrite
    barrier()  # every rank has decided before rank 0 moves anything
    if is_main():
        if done is not None:
            _set_aside(stage, done, material, log, overwrite)
        elif folder.exists():  # an interrupted attempt: debris
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if restore:
            kept.rename(folder)
        else:
            folder.mkdir()
    barrier()
    if restore:
        log(f"stage {stage.name}: restored from {SUPERSEDED}/ (its inputs are current again)")
        return read_done(folder)
    log(f"stage {stage.name}: running")
    start = time.perf_counter()
    with timings.stage(stage.name):
        summary = stage.body(inputs, folder) or {}
    done = {
        "key": key,
        "run_id": uuid.uuid4().hex,  # this execution: a rerun with the same inputs is a new upstream
        "inputs": material,
        "seconds": round(time.perf_counter() - start, 1),
        **summary,
    }
    if is_main():
        atomic_write_json(folder / "done.json", done)
    barrier()
    return done


def _set_aside(stage: Stage, done: dict, material: dict, log: Callable[[str], None], overwrite: bool) -> None:
    changes = "; ".join(changed_inputs(done.get("inputs"), material))
    if overwrite:
        shutil.rmtree(stage.folder)
        log(f"stage {stage.name}: inputs changed ({changes}); the finished stage was discarded (--overwrite)")
        return
    target = superseded_folder(stage, done["key"])
    if target.exists():  # the same key set aside before (a restore raced): keep both
        target = target.with_name(f"{target.name}-{done.get('run_id', uuid.uuid4().hex)[:8]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage.folder.rename(target)
    log(
        f"stage {stage.name}: inputs changed ({changes}); the finished stage is kept in "
        f"{target.relative_to(stage.root)}"
    )
