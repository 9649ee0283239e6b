"""Which process of a data-parallel job this is (`accelerate launch` sets RANK and WORLD_SIZE).

It lives low because run folders need it too: under `accelerate launch` every rank runs a stage's
body, but only rank 0 writes its folder and `done.json` (`anchor.stages`).
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """All ranks wait here (a no-op in a single process). Uses accelerate's process state, which
    starts the process group (NCCL on GPUs, gloo on CPUs) if the trainer has not yet."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
