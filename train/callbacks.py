"""Record activations while a model trains, so every checkpoint of every stage can be compared on
the same probe sets: the drift curves are made of these reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from anchor.chat import Conversation
from anchor.extract import ReadMode, extract
from anchor.hooks import find_blocks
from anchor.runs import checkpoint_dir as checkpoint_dir_of
from anchor.store import ActivationStore
from train.distributed import barrier, is_main, params_sharded, rank, world_size


@dataclass
class ProbeSet:
    """Conversations read at every checkpoint, with how to read them. `ends_only`: read at the
    first and last checkpoint only, for a set whose figures compare the two ends (it skips the
    reads nobody reports in between)."""

    conversations: Sequence[Conversation]
    read: ReadMode = "response_mean"
    layers: Sequence[int] | None = None
    ends_only: bool = False


# The liftable hooks installed on each model, keyed by its decoder-block list: the one module a
# PEFT wrapper, the merged model and the trainer's view of the model all share.
_LIFTABLE: WeakKeyDictionary[nn.Module, list[LiftableHooks]] = WeakKeyDictionary()


class LiftableHooks:
    """Hooks that stay on a model while it trains but come off while a checkpoint is read.

    An intervention during training (an ablation, a steering vector) must not also act on the
    read-outs that measure what training did: an anchor read with the anchor direction projected
    out is low by construction. Entered, this installs `install()` (e.g. `lambda: ablate(...)`)
    and registers itself on the model; `ActivationRecorder` then reads every probe set once with
    the hooks lifted (the clean read, under the usual names) and once with them on (entries
    suffixed `.<label>`). Lifting removes the hooks and installs a fresh copy afterwards, so a
    clean read is exactly a read of the trained weights. `read_with=False` skips the read with
    the hooks on, for interventions whose hooked read nobody reports (it doubles a checkpoint's cost)."""

    def __init__(
        self,
        model: nn.Module,
        install: Callable[[], AbstractContextManager],
        label: str,
        read_with: bool = True,
    ) -> None:
        self.model, self.install, self.label, self.read_with = model, install, label, read_with
        self._stack: ExitStack | None = None

    def _on(self) -> None:
        self._stack = ExitStack()
        self._stack.enter_context(self.install())

    def _off(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> LiftableHooks:
        self._on()
        _LIFTABLE.setdefault(find_blocks(self.model), []).append(self)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._off()
        finally:
            registered = _LIFTABLE.get(find_blocks(self.model), [])
            if self in registered:
                registered.remove(self)

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """The model without these hooks for the duration (reinstalled on every exit path, at the
        end of each block's hook list: `hooks_lifted` and `only_hooks` keep the order)."""
        self._off()
        try:
            yield
        finally:
            self._on()


@contextmanager
def only_hooks(model: nn.Module, keep: LiftableHooks) -> Iterator[None]:
    """`model` with `keep` the only liftable hooks on. Every liftable hook comes off (the last
    first) and goes back in its original order afterwards: hooks at one layer do not commute, so a
    read with one of them on must not reorder the rest for the remaining training."""
    with hooks_lifted(model):
        keep._on()
        try:
            yield
        finally:
            keep._off()


def liftable_hooks(model: nn.Module) -> list[LiftableHooks]:
    """The liftable hooks now installed on `model` (any wrapper of the same decoder blocks)."""
    return list(_LIFTABLE.get(find_blocks(model), []))


@contextmanager
def hooks_lifted(model: nn.Module) -> Iterator[None]:
    """`model` with every liftable hook off (a no-op on a model without any)."""
    with ExitStack() as stack:
        for hooks in reversed(liftable_hooks(model)):
            stack.enter_context(hooks.lifted())
        yield


def record(
    model,
    tokenizer,
    store: ActivationStore,
    probe_sets: Mapping[str, ProbeSet],
    checkpoint: str,
    meta: dict | None = None,
    write: bool = True,
    suffix: str = "",
    end: bool = True,
) -> list[str]:
    """Read every probe set at one checkpoint into `store` as `<checkpoint>/<probe set><suffix>`,
    in eval mode (no dropout) and restoring the mode after. Returns the entry names. `write=False`
    runs the read without saving it (a rank that only takes part in a sharded forward pass);
    `end=False` (a checkpoint between the first and the last) skips the `ends_only` sets."""
    was_training = model.training
    model.eval()
    names = []
    try:
        for name, probe in probe_sets.items():
            if probe.ends_only and not end:
                continue
            acts = extract(
                model, tokenizer, probe.conversations, layers=probe.layers, read=probe.read, progress=False
            )
            entry = f"{checkpoint}/{name}{suffix}"
            if write:
                store.save(entry, acts, {**(meta or {}), "checkpoint": checkpoint, "probe_set": name})
            names.append(entry)
    finally:
        model.train(was_training)
    return names


START = "start"  # the checkpoint name of a start-reads stage's entries (`train.em.start_reads_stage`)


class ActivationRecorder(TrainerCallback):
    """Every `every` optimiser steps and at the end of training: save the adapter (standard PEFT
    format) under `<adapters_dir>/step-XXXXX` and read the probe sets into the store as
    `<stage>/step-XXXXX/<probe set>`.

    The reads are clean: liftable hooks on the model (`LiftableHooks`, e.g. the EM ablation run's)
    are off while the probe sets are read; with any installed, each probe set is also read with
    them on, as `<probe set>.<label>` (e.g. `em_questions.ablated`).

    Under data parallelism (DDP) rank 0 reads and writes while the other ranks wait at a barrier;
    with sharded parameters (ZeRO-3, FSDP) every rank joins the read's forward pass and rank 0
    writes.

    `start` (a store and the checkpoint its entries are under) holds the probe sets already read
    through the starting model: step 0's clean read is copied from it instead of read again (a
    fresh LoRA adapter adds exactly 0); the reads with hooks on are still taken."""

    def __init__(
        self,
        tokenizer,
        store: ActivationStore,
        probe_sets: Mapping[str, ProbeSet],
        stage: str,
        every: int,
        adapters_dir: str | Path | None = None,
        meta: dict | None = None,
        start: tuple[ActivationStore, str] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.tokenizer, self.store, self.probe_sets = tokenizer, store, probe_sets
        self.stage, self.every, self.meta, self.start = stage, every, dict(meta or {}), start
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        self.recorded: list[int] = []

    def _checkpoint(self, model, step: int, end: bool = True) -> None:
        if step in self.recorded:
            return
        name = f"{self.stage}/step-{step:05d}"
        adapter = None
        if self.adapters_dir is not None and hasattr(model, "peft_config"):
            adapter = checkpoint_dir_of(self.adapters_dir, step)
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
        copied = step == 0 and self.start is not None
        if copied and is_main():
            self._copy_start(name, meta)
        if is_main() or params_sharded():
            with torch.no_grad():
                self._read(model, name, meta, end, clean=not copied)
        barrier()
        self.recorded.append(step)

    def _copy_start(self, name: str, meta: dict) -> None:
        """Step 0's clean entries, from the start store: the same tensors under this run's name."""
        store, checkpoint = self.start
        for probe in self.probe_sets:
            source = f"{checkpoint}/{probe}"
            if source not in store:
                raise KeyError(
                    f"{store.root}: no start read {source!r} (the probe sets differ from the run's)"
                )
            copied_from = f"{store.root}:{source}"
            self.store.save(
                f"{name}/{probe}",
                store.load(source),
                {**meta, "hooks": None, "checkpoint": name, "probe_set": probe, "copied_from": copied_from},
            )

    def _read(self, model, name: str, meta: dict, end: bool, clean: bool = True) -> None:
        """The clean read (unless `clean` is False: copied from the start), then one read per
        liftable hook on the model with only it on."""
        installed = liftable_hooks(model)
        if clean:
            with hooks_lifted(model):
                record(
                    model,
                    self.tokenizer,
                    self.store,
                    self.probe_sets,
                    name,
                    {**meta, "hooks": None},
                    is_main(),
                    end=end,
                )
        for hooks in (h for h in installed if h.read_with):
            with only_hooks(model, hooks):
                record(
                    model,
                    self.tokenizer,
                    self.store,
                    self.probe_sets,
                    name,
                    {**meta, "hooks": hooks.label},
                    is_main(),
                    suffix=f".{hooks.label}",
                    end=end,
                )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        self._checkpoint(model, state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        if state.global_step % self.every == 0:  # the last step is an end (read in full)
            self._checkpoint(model, state.global_step, end=state.global_step >= state.max_steps)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kw
    ):
        self._checkpoint(model, state.global_step)
