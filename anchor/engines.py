"""Who holds the GPU: a registry of live generation engines.

vLLM takes a fixed share of the GPU's memory when it starts and refuses to start when less is
free, and PyTorch training or an in-process judge need the same memory. So the pipelines keep one
rule: at most one engine alive at a time (teacher, then student), and no training or judge while
one is. Engines register here when they start and release when they close; training and judges
call `assert_no_engine` before they take the GPU, which turns an out-of-memory crash hours into a
run into an immediate error that says what is still alive.
"""

from __future__ import annotations

import threading
import weakref

_lock = threading.Lock()
# Weak references: an engine dropped without `close()` has been garbage-collected with its model,
# so it no longer holds the GPU (a vLLM engine's child process is stopped by its finaliser).
_alive: dict[int, tuple[weakref.ref, str]] = {}


def _prune() -> None:
    for key in [k for k, (ref, _) in _alive.items() if ref() is None]:
        del _alive[key]


def register(engine: object, name: str) -> None:
    """Record `engine` as alive; refuses a second live engine."""
    with _lock:
        _prune()
        if _alive:
            names = ", ".join(repr(n) for _, n in _alive.values())
            raise RuntimeError(
                f"cannot start generation engine {name!r} while {names} "
                "is alive: close it first (use generators as context managers: `with make_generator(...) as g:`)"
            )
        _alive[id(engine)] = (weakref.ref(engine), name)


def release(engine: object) -> None:
    with _lock:
        _alive.pop(id(engine), None)


def alive() -> list[str]:
    """Names of the engines alive now."""
    with _lock:
        _prune()
        return [name for _, name in _alive.values()]


def assert_no_engine(what: str) -> None:
    """Raise if any engine is alive: `what` (training, a judge) is about to take the GPU."""
    names = alive()
    if names:
        raise RuntimeError(
            f"{what} cannot start while generation engine(s) {', '.join(map(repr, names))} hold the "
            "GPU: close them first"
        )
