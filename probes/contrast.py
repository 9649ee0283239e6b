"""Persona contrast sets: the same questions answered under a persona-eliciting and a
persona-suppressing system prompt, read as response-averaged activations (the persona-vector
recipe). The system prompt stays in context when reading, as it was when the response was made."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor.chat import Conversation
from anchor.constitution import ContrastPair
from anchor.extract import Activations, extract
from anchor.generate import Generator, SamplingConfig

# A trait-expression judge: (question, response) -> score in 0..100, or None when it fails.
TraitJudge = Callable[[str, str], float | None]


@dataclass(frozen=True)
class ContrastItem:
    question: str
    pair: int
    label: int  # 1 = persona elicited, 0 = suppressed
    system: str
    response: str

    @property
    def conversation(self) -> Conversation:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.question},
            {"role": "assistant", "content": self.response},
        ]

    def to_json(self) -> dict:
        return asdict(self)


def sample_contrast(
    questions: Sequence[str],
    pairs: Sequence[ContrastPair],
    generator: Generator,
    pairs_per_question: int = 2,
    samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[ContrastItem]:
    """Answers to every question under `pairs_per_question` contrast pairs (cycled through the
    pairs, so every pair is used), both polarities, `samples` each."""
    if not pairs:
        raise ValueError("the persona has no contrast pairs")
    jobs = []
    for q_index, question in enumerate(questions):
        for j in range(min(pairs_per_question, len(pairs))):
            p = (q_index + j) % len(pairs)
            jobs += [(question, p, 1, pairs[p].elicit), (question, p, 0, pairs[p].suppress)]
    prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}] for q, _, _, s in jobs]
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=samples, seed=seed)
    replies = generator.generate(prompts, config)
    return [
        ContrastItem(q, p, label, system, reply)
        for (q, p, label, system), samples_ in zip(jobs, replies)
        for reply in samples_
        if reply.strip()
    ]


def filter_by_judge(
    items: Sequence[ContrastItem], judge: TraitJudge, margin: float = 50.0
) -> list[ContrastItem]:
    """Keep elicited responses that express the trait (score >= margin) and suppressed ones that do
    not (score < margin); failed judgements drop the item."""
    kept = []
    for item in items:
        score = judge(item.question, item.response)
        if score is not None and (score >= margin) == bool(item.label):
            kept.append(item)
    return kept


def contrast_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[ContrastItem],
    layers: int | Sequence[int] | None = None,
    **extract_kwargs,
) -> tuple[Activations, torch.Tensor]:
    """Response-averaged activations of the items and their labels."""
    acts = extract(model, tokenizer, [item.conversation for item in items], layers=layers, **extract_kwargs)
    return acts, torch.tensor([item.label for item in items])
