"""One writer per run folder.

Two processes on one folder (a second terminal, a rerun while the first still runs) would race on
the same stages. `run_lock` takes an OS lock on `<folder>/.lock` through filelock: the kernel
releases it when the holder exits or is killed, so a lock left by a `kill -9` never blocks the next
run. A second process fails at once with the folder and the holder's pid (recorded beside the lock
once it is held). The same process may take the lock again (the defences harness runs the main job
on its own folder).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK, HOLDER = ".lock", ".lock.holder"
_held: dict[Path, int] = {}  # folders this process holds, with their nesting depth


class RunLocked(RuntimeError):
    """Another process is writing the folder."""


@contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run folder") -> Iterator[None]:
    """Hold `folder` for this process while the block runs (a no-op on ranks other than 0 of a
    data-parallel job: their launcher holds it)."""
    from anchor.distributed import is_main

    folder = Path(folder).resolve()
    if not is_main() or folder in _held:
        _held[folder] = _held.get(folder, 0) + 1
        try:
            yield
        finally:
            _release_depth(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"{what} {folder} is in use by {_holder(folder)}; wait for it or stop it") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    (folder / HOLDER).write_text(json.dumps(holder))
    _held[folder] = 1
    try:
        yield
    finally:
        _held.pop(folder, None)
        lock.release()


def _release_depth(folder: Path) -> None:
    _held[folder] -= 1
    if _held[folder] == 0:
        del _held[folder]


def _holder(folder: Path) -> str:
    try:
        holder = json.loads((folder / HOLDER).read_text())
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError):
        return "another process (pid not yet recorded)"
