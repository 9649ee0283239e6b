"""Record activations while a model trains, so every checkpoint of every stage can be compared on
the same probe sets: the drift curves are made of these reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from anchor.chat import Conversation
from anchor.extract import ReadMode, extract
from anchor.store import ActivationStore
from train.distributed import barrier, is_main, params_sharded, rank, world_size


@dataclass
class ProbeSet:
    """Conversations read at every checkpoint, with how to read them."""

    conversations: Sequence[Conversation]
    read: ReadMode = "response_mean"
    layers: Sequence[int] | None = None


def record(
    model,
    tokenizer,
    store: ActivationStore,
    probe_sets: Mapping[str, ProbeSet],
    checkpoint: str,
    meta: dict | None = None,
    write: bool = True,
) -> list[str]:
    """Read every probe set at one checkpoint into `store` as `<checkpoint>/<probe set>`, in eval
    mode (no dropout) and restoring the mode after. Returns the entry names. `write=False` runs
    the read without saving it (a rank that only takes part in a sharded forward pass)."""
    was_training = model.training
    model.eval()
    names = []
    try:
        for name, probe in probe_sets.items():
            acts = extract(
                model, tokenizer, probe.conversations, layers=probe.layers, read=probe.read, progress=False
            )
            entry = f"{checkpoint}/{name}"
            if write:
                store.save(entry, acts, {**(meta or {}), "checkpoint": checkpoint, "probe_set": name})
            names.append(entry)
    finally:
        model.train(was_training)
    return names


class ActivationRecorder(TrainerCallback):
    """Every `every` optimiser steps and at the end of training: save the adapter (standard PEFT
    format) under `<adapters_dir>/<stage>/step-XXXXX` and read the probe sets into the store as
    `<stage>/step-XXXXX/<probe set>`.

    Under data parallelism (DDP) rank 0 reads and writes while the other ranks wait at a barrier;
    with sharded parameters (ZeRO-3, FSDP) every rank joins the read's forward pass and rank 0
    writes."""

    def __init__(
        self,
        tokenizer,
        store: ActivationStore,
        probe_sets: Mapping[str, ProbeSet],
        stage: str,
        every: int,
        adapters_dir: str | Path | None = None,
        meta: dict | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.tokenizer, self.store, self.probe_sets = tokenizer, store, probe_sets
        self.stage, self.every, self.meta = stage, every, dict(meta or {})
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        self.recorded: list[int] = []

    def _checkpoint(self, model, step: int) -> None:
        if step in self.recorded:
            return
        name = f"{self.stage}/step-{step:05d}"
        adapter = None
        if self.adapters_dir is not None and hasattr(model, "peft_config"):
            adapter = self.adapters_dir / name
            if is_main():
                model.save_pretrained(adapter)
        meta = {
            **self.meta,
            "stage": self.stage,
            "step": step,
            "adapter": str(adapter) if adapter else None,
            "rank": rank(),  # the writer: always 0, also under accelerate
            "world_size": world_size(),
        }
        if is_main() or params_sharded():
            with torch.no_grad():
                record(model, self.tokenizer, self.store, self.probe_sets, name, meta, write=is_main())
        barrier()
        self.recorded.append(step)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        self._checkpoint(model, state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        if state.global_step % self.every == 0:
            self._checkpoint(model, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        self._checkpoint(model, state.global_step)
