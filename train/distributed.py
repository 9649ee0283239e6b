"""Data-parallel training through accelerate (`accelerate launch --num_processes N ...`).

TRL's trainers already run data-parallel under accelerate; what this module adds is the run
directory's side of it: one writer (rank 0) for folders, `done.json`, adapters and activation
stores, barriers where the other ranks must wait for it, and the split of the preset's effective
batch over processes, so a run of N processes takes the same optimizer steps and checkpoints as a
single process.
"""

from __future__ import annotations

import os

from anchor.distributed import barrier, is_main, rank, world_size

__all__ = ["barrier", "is_main", "rank", "world_size", "params_sharded", "split_batch", "training_device"]


def params_sharded() -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP, where no rank holds the whole model: a read of the
    activations then needs every rank in the forward pass."""
    if world_size() == 1:
        return False
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def split_batch(effective: int, per_device_max: int, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with per-device x accumulation x processes equal to
    `effective`, the per-device batch as large as allowed: the global batch of a preset stays
    what it is however many processes run it."""
    if effective % processes:
        raise ValueError(
            f"the effective batch {effective} cannot be split over {processes} processes; "
            f"use a number of processes that divides it"
        )
    per_rank = effective // processes
    per_device = max(d for d in range(1, min(per_device_max, per_rank) + 1) if per_rank % d == 0)
    return per_device, per_rank // per_device


def training_device() -> str | None:
    """This rank's GPU under `accelerate launch` (each rank loads its replica straight there, not
    all onto GPU 0); None in a single process, where `load_model` picks the device itself."""
    import torch

    if world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return None
