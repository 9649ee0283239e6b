"""Where a command's time goes: wall seconds and work counts per stage, plus what ran outside stages.

The components that do the work count it as it happens (`count(model_loads=1)`, tokens generated,
tokens read through the model, optimizer steps); `run_stage` opens a `stage(name)` around each body.
A command opens one `recording()`; its `rows()` give each stage's *own* time and counts (a stage run
inside another is its own row, not part of its parent's) and an `other` row for the rest, so the rows
sum to the command's wall time by construction. Without a recording nothing is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields

OTHER = "other"


@dataclass
class Counts:
    model_loads: int = 0
    tokens_generated: int = 0
    tokens_read: int = 0
    optimizer_steps: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


_totals = Counts()  # this process's work so far


def count(**amounts: int) -> None:
    """Add work done (e.g. `count(tokens_generated=n)`) to this process's totals."""
    for name, amount in amounts.items():
        setattr(_totals, name, getattr(_totals, name) + int(amount))


def totals() -> Counts:
    return Counts(**asdict(_totals))


class Recorder:
    """One command's timings."""

    def __init__(self) -> None:
        self._start, self._start_counts = time.perf_counter(), totals()
        self._rows: list[dict] = []
        self._open: list[list] = []  # per open stage: [children's wall seconds, children's counts]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start, counts = time.perf_counter(), totals()
        self._open.append([0.0, Counts()])
        try:
            yield
        finally:
            children_seconds, children_counts = self._open.pop()
            wall, work = time.perf_counter() - start, totals() - counts
            own = work - children_counts
            self._rows.append({"stage": name, "seconds": round(wall - children_seconds, 2), **asdict(own)})
            if self._open:  # the parent's own time excludes this stage's
                self._open[-1][0] += wall
                self._open[-1][1] = self._open[-1][1] + work

    def rows(self) -> list[dict]:
        """Each stage run so far, then `other`: the command's wall time and work outside any stage."""
        wall = time.perf_counter() - self._start
        work = totals() - self._start_counts
        staged = Counts()
        for row in self._rows:
            staged = staged + Counts(**{k: row[k] for k in asdict(Counts())})
        other = {
            "stage": OTHER,
            "seconds": round(wall - sum(r["seconds"] for r in self._rows), 2),
            **asdict(work - staged),
        }
        return [*self._rows, other]


_active: Recorder | None = None


@contextmanager
def recording() -> Iterator[Recorder]:
    """Record the timings of everything run inside (nested recordings share the outer one)."""
    global _active
    if _active is not None:
        yield _active
        return
    _active = Recorder()
    try:
        yield _active
    finally:
        _active = None


def stage(name: str):
    """Time a stage under the current recording (nothing when none is open)."""
    return _active.stage(name) if _active is not None else nullcontext()


def largest(rows: list[dict], k: int = 3) -> str:
    """'name 812 s, name 300 s, ...': the k rows that took longest."""
    top = sorted(rows, key=lambda r: r["seconds"], reverse=True)[:k]
    return ", ".join(f"{r['stage']} {r['seconds']:.0f} s" for r in top)
