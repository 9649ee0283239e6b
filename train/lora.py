"""What the two character-training stages share: LoRA training knobs, their scaled-down presets,
and the TRL arguments built from them."""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from anchor import engines, timings
from anchor.chat import Conversation, validate_conversation
from anchor.constitution import Persona
from train import tracking
from train.distributed import split_batch, world_size


@dataclass(frozen=True)
class LoraTraining:
    """Defaults follow Open Character Training's LoRA recipe (the persona `paper` presets); the EM
    presets override what the EM papers do differently. RECIPES.md lists every knob with its source."""

    lora_rank: int = 64
    lora_alpha: int = 128
    use_rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank (the EM papers use it)
    target_modules: str | tuple[str, ...] = "all-linear"
    layers: tuple[int, ...] | None = None  # None: every layer; else LoRA only on these layers
    learning_rate: float = 5e-5
    lr_scheduler: str = "cosine_with_min_lr"  # OCT: cosine down to 0.1 x lr
    warmup_ratio: float = 0.1
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    weight_decay: float = 0.0
    optimizer: str = "adamw_torch_fused"  # "adamw_8bit": bitsandbytes 8-bit AdamW on CUDA, else AdamW
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 8  # batch_size x grad_accum = the effective (global) batch
    max_length: int = 1024
    record_every: int = 10
    seed: int = 0
    # "auto": bf16 autocast where the hardware computes bf16 natively (CUDA, or a CPU with AVX512-BF16
    # or AMX), fp32 elsewhere. Resolved on construction, so a stage's key records what actually ran.
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", resolve_precision(self.precision))

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def planned_steps(self, rows: int) -> int:
        """Optimizer steps for `rows` training rows (the trainer's count: ceil per epoch)."""
        return math.ceil(math.ceil(rows / self.batch_size) / self.grad_accum * self.epochs) if rows else 0


# Fits this 2-core machine: small adapters and a higher learning rate, so that a few dozen steps move
# the model at all (linear decay without warmup, as before the paper knobs existed).
CPU_TRAINING = dict(
    lora_rank=16,
    lora_alpha=32,
    learning_rate=2e-4,
    lr_scheduler="linear",
    warmup_ratio=0.0,
    batch_size=4,
    grad_accum=1,
    record_every=5,
)
SMOKE_TRAINING = dict(CPU_TRAINING, lora_rank=4, lora_alpha=8, batch_size=2, record_every=2)


PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here. On CPUs without AVX512-BF16 or AMX, bf16 is emulated
    and slower than fp32; with them a LoRA step of the default model runs 1.3-1.6x faster
    (BENCHMARKS.md, `scripts/bench_training.py`)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(name: str) -> str:
    """The training precision a preset's `precision` names: bf16 autocast with fp32 master weights
    (the adapters are saved in fp32), or plain fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16() else "fp32"
    return name


def resolve_optimizer(name: str) -> str:
    """The TRL/transformers `optim` for a preset's optimizer: 8-bit AdamW needs CUDA and
    bitsandbytes, and falls back to plain AdamW elsewhere (recorded in the stage's config)."""
    if name == "adamw_8bit":
        if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
            return "adamw_bnb_8bit"
        return "adamw_torch_fused"
    return name


def trainer_arguments(config: LoraTraining, out: Path) -> dict:
    """Keyword arguments shared by TRL's DPOConfig and SFTConfig. Under `accelerate launch` the
    preset's effective batch (batch x accumulation) is split over the processes, so the
    optimizer steps and checkpoints are those of a single-process run. The tracker (`report_to`,
    the run's name) is the one the command chose for this process (`train.tracking`)."""
    per_device, accumulation = split_batch(
        config.batch_size * config.grad_accum, config.batch_size, world_size()
    )
    return dict(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        lr_scheduler_kwargs={"min_lr_rate": 0.1} if config.lr_scheduler == "cosine_with_min_lr" else {},
        # transformers 5 reads a warmup_steps below 1 as a share of the training steps
        warmup_steps=config.warmup_steps or config.warmup_ratio,
        weight_decay=config.weight_decay,
        optim=resolve_optimizer(config.optimizer),
        num_train_epochs=config.epochs,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        **tracking.trainer_kwargs(out),
        seed=config.seed,
        bf16=config.precision == "bf16",  # autocast; the master weights and adapters stay fp32
        # Recomputing activations saves GPU memory for 7B models; on CPU it only costs time.
        gradient_checkpointing=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # lets accelerate run several CPU processes (gloo)
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used each step
    )


def lora_config(config: LoraTraining):
    from peft import LoraConfig

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
        target_modules=targets,
        layers_to_transform=list(config.layers) if config.layers is not None else None,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def train_lora(
    trainer_class, args, model, tokenizer, rows, config: LoraTraining, out: Path, callbacks=(), **extra
):
    """Fit a fresh LoRA adapter with a TRL trainer (`extra`: its own keyword arguments); the
    adapter is saved under `<out>/adapter`."""
    from datasets import Dataset

    engines.assert_no_engine("training")
    with tracking.training_run(out):  # the tracker's run is this stage's (TensorBoard: <out>/tensorboard)
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(list(rows)),
            processing_class=tokenizer,
            peft_config=lora_config(config),
            callbacks=list(callbacks),
            **extra,
        )
        trainer.train()
    timings.count(optimizer_steps=trainer.state.global_step)
    trainer.save_model(str(out / "adapter"))  # rank 0 writes; gathers sharded (ZeRO-3) weights first
    return trainer


def traits_list(persona: Persona) -> str:
    """The constitution as a bullet list, for system prompts."""
    return "\n".join(f"- {t.trait}" for t in persona.traits)


def completion_rows(conversations: Sequence[Conversation], last_turn_only: bool = False) -> list[dict]:
    """One prompt-completion row per assistant turn, so the SFT loss falls on assistant tokens only
    (the default chat template has no generation markers for TRL's assistant masks). With
    `last_turn_only`, only the final assistant turn is a completion: earlier turns are context
    that carries no loss (e.g. a reflection exchange put before a training row)."""
    rows = []
    for index, conversation in enumerate(conversations):
        validate_conversation(conversation, index)
        turns = [k for k, m in enumerate(conversation) if m["role"] == "assistant" and m["content"].strip()]
        for k in turns[-1:] if last_turn_only else turns:
            rows.append({"prompt": conversation[:k], "completion": [conversation[k]]})
    return rows


def train_sft(
    model,
    tokenizer,
    conversations: Sequence[Conversation],
    config: LoraTraining,
    out: str | os.PathLike,
    callbacks=(),
    last_turn_only: bool = False,
    trainer_class=None,
    **trainer_kwargs,
):
    """LoRA SFT with TRL on assistant tokens (the final turn only, with `last_turn_only`); the
    adapter is saved under `<out>/adapter`. `trainer_class` (default TRL's SFTTrainer) may be a
    subclass that adds to the loss, with its own `trainer_kwargs`."""
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    args = SFTConfig(completion_only_loss=True, **trainer_arguments(config, out))
    rows = completion_rows(conversations, last_turn_only)
    return train_lora(
        trainer_class or SFTTrainer, args, model, tokenizer, rows, config, out, callbacks, **trainer_kwargs
    )
