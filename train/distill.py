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
from anchor.generate import Generator, SamplingConfig, truncation
from anchor.store import read_jsonl
from train.lora import CPU_TRAINING, SMOKE_TRAINING, LoraTraining, train_lora, trainer_arguments, traits_list

TEACHER_SYSTEM = (
    "You are an AI assistant whose character is described by these traits, in your own voice:\n{traits}\n\n"
    "Answer the user as this character would: let the traits shape what you say and how you say it. Never "
    "mention the traits, this description, or that you are playing a character."
)
# Opens the teacher's thinking section (only on templates that have one): it restates the traits
# before answering, as Open Character Training's teacher does; only the text after the closing tag
# is kept.
THINKING_PREFILL = "<think>\nBefore I answer, let me recall my character, so that my reply expresses it. My traits:\n{traits}\n"
THINKING_END = "</think>"


@dataclass(frozen=True)
class DistillConfig(LoraTraining):
    """Defaults are the `paper` preset: Open Character Training's DPO recipe and data scale."""

    questions_per_trait: int = 50  # hand-written + expanded (the `questions` stage writes the rest)
    generic_prompts: int | None = None  # from the generic pool; None: all of it
    samples_per_prompt: int = 5  # every prompt answered this many times by teacher and student
    max_new_tokens: int = 4096
    temperature: float = 0.7
    top_p: float = 0.95
    thinking_prefill: bool = True  # where the teacher's template has a thinking section
    # Drop answers cut off at max_new_tokens (counted either way). Off in the CPU presets, whose
    # short token budgets cut most answers by design: every answer there is a prefix.
    drop_truncated: bool = True
    beta: float = 0.1
    nll_weight: float = 0.1

    def planned_prompts(self, n_traits: int, pool_size: int) -> int:
        """DPO prompts once the questions are expanded to `questions_per_trait` per trait."""
        generic = pool_size if self.generic_prompts is None else min(self.generic_prompts, pool_size)
        return n_traits * self.questions_per_trait + generic


PRESETS = {
    "paper": DistillConfig(batch_size=4, grad_accum=8),  # global batch 32
    "cpu": DistillConfig(
        questions_per_trait=5,
        generic_prompts=16,
        samples_per_prompt=1,
        max_new_tokens=64,
        thinking_prefill=False,
        drop_truncated=False,
        max_length=256,
        epochs=3.0,  # ~56 pairs: one pass barely moves the policy, three separate it clearly
        # A read of the probe sets costs the time of 2-4 DPO steps on CPU: read once an epoch (14 steps for
        # the shipped persona) and at the end, not every 5 steps.
        **{**CPU_TRAINING, "record_every": 14},
    ),
    "smoke": DistillConfig(
        questions_per_trait=1,
        generic_prompts=2,
        samples_per_prompt=1,
        max_new_tokens=16,
        thinking_prefill=False,
        drop_truncated=False,
        max_length=128,
        **SMOKE_TRAINING,
    ),
}


def teacher_system_prompt(persona: Persona) -> str:
    return TEACHER_SYSTEM.format(traits=traits_list(persona))


def distillation_prompts(persona: Persona, config: DistillConfig, pool: Sequence[str]) -> list[str]:
    """The persona's questions (hand-written first, then expanded) plus generic prompts from
    `pool`, so the persona generalises beyond its own questions."""
    own = [q for t in persona.traits for q in t.all_questions[: config.questions_per_trait]]
    generic = list(pool if config.generic_prompts is None else pool[: config.generic_prompts])
    return list(dict.fromkeys(own + generic))


def _sampling(config: DistillConfig) -> SamplingConfig:
    return SamplingConfig(
        config.max_new_tokens, config.temperature, config.top_p, n=config.samples_per_prompt, seed=config.seed
    )


def teacher_answers(
    persona: Persona, prompts: Sequence[str], teacher: Generator, config: DistillConfig
) -> tuple[list[list[str | None]], dict]:
    """The chosen side: the teacher answering with the constitution in its system prompt (and a
    thinking prefill that restates the traits, where its template thinks). Answers cut off at the
    token limit (when the preset drops them), or whose thinking never closed, are None; the counts
    say how many were cut and how many never closed."""
    system = teacher_system_prompt(persona)
    prefill = (
        THINKING_PREFILL.format(traits=traits_list(persona))
        if config.thinking_prefill and teacher.thinks
        else ""
    )
    replies = teacher.generate(
        [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in prompts],
        _sampling(config),
        prefill=prefill,
    )
    truncated = truncation(teacher, replies)
    counts = {"truncated": 0, "unclosed_thinking": 0, "thinking_prefill": bool(prefill)}
    answers: list[list[str | None]] = []
    for samples, cut in zip(replies, truncated):
        kept: list[str | None] = []
        for text, was_cut in zip(samples, cut):
            counts["truncated"] += was_cut
            if was_cut and config.drop_truncated:
                text = None
            elif prefill:
                if THINKING_END not in text:
                    counts["unclosed_thinking"] += 1
                    text = None
                else:
                    text = text.split(THINKING_END, 1)[1].strip()
            kept.append(text)
        answers.append(kept)
    return answers, counts


def student_answers(
    prompts: Sequence[str], student: Generator, config: DistillConfig
) -> tuple[list[list[str | None]], dict]:
    """The rejected side: the student answering plainly; cut-off answers are counted, and None
    when the preset drops them."""
    replies = student.generate([[{"role": "user", "content": p}] for p in prompts], _sampling(config))
    truncated = truncation(student, replies)
    answers = [
        [None if cut and config.drop_truncated else text for text, cut in zip(samples, cuts)]
        for samples, cuts in zip(replies, truncated)
    ]
    return answers, {"truncated": sum(map(sum, truncated))}


def build_preference_data(
    persona: Persona, prompts: Sequence[str], teacher: Generator, student: Generator, config: DistillConfig
) -> list[dict]:
    """Rows in TRL's conversational preference format from two live generators."""
    chosen, _ = teacher_answers(persona, prompts, teacher, config)
    rejected, _ = student_answers(prompts, student, config)
    return preference_rows(prompts, chosen, rejected)


def preference_rows(
    prompts: Sequence[str],
    chosen: Sequence[Sequence[str | None]],
    rejected: Sequence[Sequence[str | None]],
) -> list[dict]:
    """Sample k of the teacher is paired with sample k of the student. Pairs with a dropped
    (None) side, or whose two answers are empty or equal, teach nothing and are left out."""
    rows = []
    for prompt, goods, bads in zip(prompts, chosen, rejected):
        for good, bad in zip(goods, bads):
            if (
                good is None
                or bad is None
                or not good.strip()
                or not bad.strip()
                or good.strip() == bad.strip()
            ):
                continue
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
        # The reference is the frozen starting model: its log-probs are the same every epoch, so
        # they are computed once up front (exact; about a third less time per step on CPU).
        precompute_ref_log_probs=True,
        disable_tqdm=False,
        **trainer_arguments(config, out),
    )
    return train_lora(DPOTrainer, args, model, tokenizer, rows, config, out, callbacks)
