"""DPO distillation of a persona (the first stage of character training).

Chosen responses come from a teacher answering with the constitution in its system prompt and an
instruction to embody it without announcing it; rejected responses come from the student answering
plainly. DPO on these pairs (with a small NLL term on the chosen side) moves the persona from the
system prompt into the weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anchor.constitution import Persona
from anchor.generate import Generator, SamplingConfig
from anchor.probe_sets import QUESTIONS as GENERIC_PROMPTS
from anchor.store import read_jsonl
from train.lora import CPU_TRAINING, SMOKE_TRAINING, LoraTraining, train_lora, trainer_arguments, traits_list

TEACHER_SYSTEM = (
    "You are an AI assistant whose character is described by these traits, in your own voice:\n{traits}\n\n"
    "Answer the user as this character would: let the traits shape what you say and how you say it. Never "
    "mention the traits, this description, or that you are playing a character."
)


@dataclass(frozen=True)
class DistillConfig(LoraTraining):
    """Defaults are the `paper` preset (the published recipe); `PRESETS` scales it down."""

    questions_per_trait: int = 50
    generic_prompts: int = len(GENERIC_PROMPTS)
    max_new_tokens: int = 256
    temperature: float = 0.7
    beta: float = 0.1
    nll_weight: float = 0.1


PRESETS = {
    "paper": DistillConfig(),
    "cpu": DistillConfig(
        questions_per_trait=5,
        generic_prompts=16,
        max_new_tokens=64,
        max_length=256,
        epochs=3.0,  # ~56 pairs: one pass barely moves the policy, three separate it clearly
        **CPU_TRAINING,
    ),
    "smoke": DistillConfig(
        questions_per_trait=1, generic_prompts=2, max_new_tokens=16, max_length=128, **SMOKE_TRAINING
    ),
}


def teacher_system_prompt(persona: Persona) -> str:
    return TEACHER_SYSTEM.format(traits=traits_list(persona))


def distillation_prompts(persona: Persona, config: DistillConfig) -> list[str]:
    """The persona's questions (hand-written first, then expanded) plus generic assistant prompts,
    so the persona generalises beyond its own questions."""
    own = [q for t in persona.traits for q in t.all_questions[: config.questions_per_trait]]
    return list(dict.fromkeys(own + list(GENERIC_PROMPTS[: config.generic_prompts])))


def teacher_answers(
    persona: Persona, prompts: Sequence[str], teacher: Generator, config: DistillConfig
) -> list[list[str]]:
    """The chosen side: the teacher answering with the constitution in its system prompt."""
    sampling = SamplingConfig(config.max_new_tokens, config.temperature, seed=config.seed)
    system = teacher_system_prompt(persona)
    return teacher.generate(
        [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in prompts], sampling
    )


def student_answers(prompts: Sequence[str], student: Generator, config: DistillConfig) -> list[list[str]]:
    """The rejected side: the student answering plainly."""
    sampling = SamplingConfig(config.max_new_tokens, config.temperature, seed=config.seed)
    return student.generate([[{"role": "user", "content": p}] for p in prompts], sampling)


def build_preference_data(
    persona: Persona, prompts: Sequence[str], teacher: Generator, student: Generator, config: DistillConfig
) -> list[dict]:
    """Rows in TRL's conversational preference format from two live generators."""
    return preference_rows(
        prompts, teacher_answers(persona, prompts, teacher, config), student_answers(prompts, student, config)
    )


def preference_rows(
    prompts: Sequence[str], chosen: Sequence[Sequence[str]], rejected: Sequence[Sequence[str]]
) -> list[dict]:
    """Pairs whose two answers are empty or equal teach nothing and are dropped."""
    rows = []
    for prompt, (good,), (bad,) in zip(prompts, chosen, rejected):
        if good.strip() and bad.strip() and good.strip() != bad.strip():
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
    return rows


def _messages(value: object, where: str, field: str, role: str | None) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field '{field}' must be a non-empty list of messages")
    for i, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or not message["content"].strip()
        ):
            raise ValueError(f"{where}: field '{field}' message {i} has no non-empty 'content'")
        if role is not None and message.get("role") != role:
            raise ValueError(
                f"{where}: field '{field}' message {i} has role {message.get('role')!r}, expected {role!r}"
            )


def load_preference_data(path: str | os.PathLike) -> list[dict]:
    """Read and check a preference JSONL (`prompt`, `chosen`, `rejected`, conversational) before any
    training starts; errors name the file, the line and the field."""
    path = Path(path)
    rows = []
    for where, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with prompt, chosen and rejected")
        _messages(row.get("prompt"), where, "prompt", None)
        _messages(row.get("chosen"), where, "chosen", "assistant")
        _messages(row.get("rejected"), where, "rejected", "assistant")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def train_dpo(
    model, tokenizer, rows: Sequence[dict], config: DistillConfig, out: str | os.PathLike, callbacks=()
):
    """LoRA DPO with TRL; returns the trainer (its `state.log_history` holds reward margins and
    accuracies per logging step). The adapter is saved under `<out>/adapter`."""
    from trl import DPOConfig, DPOTrainer

    out = Path(out)
    args = DPOConfig(
        beta=config.beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, config.nll_weight],
        disable_tqdm=False,
        **trainer_arguments(config, out),
    )
    return train_lora(DPOTrainer, args, model, tokenizer, rows, config, out, callbacks)
