"""What the two character-training stages share: LoRA training knobs, their scaled-down presets,
and the TRL arguments built from them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from anchor import engines
from anchor.chat import Conversation, validate_conversation
from anchor.constitution import Persona
from train.distributed import split_batch, world_size


@dataclass(frozen=True)
class LoraTraining:
    """Defaults follow the published recipe (the `paper` preset)."""

    lora_rank: int = 64
    lora_alpha: int = 128
    learning_rate: float = 5e-5
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 8
    max_length: int = 1024
    record_every: int = 10
    seed: int = 0


# Fits this 2-core machine: small adapters and a higher learning rate, so that a few dozen steps move
# the model at all.
CPU_TRAINING = dict(
    lora_rank=16, lora_alpha=32, learning_rate=2e-4, batch_size=4, grad_accum=1, record_every=5
)
SMOKE_TRAINING = dict(
    lora_rank=4, lora_alpha=8, learning_rate=2e-4, batch_size=2, grad_accum=1, record_every=2
)


def trainer_arguments(config: LoraTraining, out: Path) -> dict:
    """Keyword arguments shared by TRL's DPOConfig and SFTConfig. Under `accelerate launch` the
    preset's effective batch (batch x accumulation) is split over the processes, so the
    optimizer steps and checkpoints are those of a single-process run."""
    per_device, accumulation = split_batch(
        config.batch_size * config.grad_accum, config.batch_size, world_size()
    )
    return dict(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # fp32 on CPU
        # Recomputing activations saves GPU memory for 7B models; on CPU it only costs time.
        gradient_checkpointing=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # lets accelerate run several CPU processes (gloo)
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used each step
    )


def lora_config(config: LoraTraining):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def train_lora(trainer_class, args, model, tokenizer, rows, config: LoraTraining, out: Path, callbacks=()):
    """Fit a fresh LoRA adapter with a TRL trainer; the adapter is saved under `<out>/adapter`."""
    from datasets import Dataset

    engines.assert_no_engine("training")
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=list(callbacks),
    )
    trainer.train()
    trainer.save_model(str(out / "adapter"))  # rank 0 writes; gathers sharded (ZeRO-3) weights first
    return trainer


def traits_list(persona: Persona) -> str:
    """The constitution as a bullet list, for system prompts."""
    return "\n".join(f"- {t.trait}" for t in persona.traits)


def completion_rows(conversations: Sequence[Conversation]) -> list[dict]:
    """One prompt-completion row per assistant turn, so the SFT loss falls on assistant tokens only
    (the default chat template has no generation markers for TRL's assistant masks)."""
    rows = []
    for index, conversation in enumerate(conversations):
        validate_conversation(conversation, index)
        for k, message in enumerate(conversation):
            if message["role"] == "assistant" and message["content"].strip():
                rows.append({"prompt": conversation[:k], "completion": [message]})
    return rows


def train_sft(
    model,
    tokenizer,
    conversations: Sequence[Conversation],
    config: LoraTraining,
    out: str | os.PathLike,
    callbacks=(),
):
    """LoRA SFT with TRL on assistant tokens; the adapter is saved under `<out>/adapter`."""
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    args = SFTConfig(completion_only_loss=True, **trainer_arguments(config, out))
    return train_lora(
        SFTTrainer, args, model, tokenizer, completion_rows(conversations), config, out, callbacks
    )
