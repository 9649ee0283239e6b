"""Persona contrast sets: the same questions answered under a persona-eliciting and a
persona-suppressing system prompt, read as response-averaged activations (the persona-vector
recipe). They are read twice: without the system prompt (`bare_conversation`, the default: the
trait must be in the response) and with it (`conversation`, as Persona Vectors reads them)."""

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

    @property
    def bare_conversation(self) -> Conversation:
        """The exchange without the system prompt that made it: read this way, a persona direction
        can only come from the response text, not from which instruction is in context."""
        return self.conversation[1:]

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
    system_prompt: bool = True,
    **extract_kwargs,
) -> tuple[Activations, torch.Tensor]:
    """Response-averaged activations of the items and their labels, read with the system prompt
    that produced each answer (Persona Vectors' read) or without it (`system_prompt=False`)."""
    conversations = [item.conversation if system_prompt else item.bare_conversation for item in items]
    acts = extract(model, tokenizer, conversations, layers=layers, **extract_kwargs)
    return acts, torch.tensor([item.label for item in items])


def filter_pairs(
    items: Sequence[ContrastItem],
    trait_scores: Sequence[float | None],
    coherence_scores: Sequence[float | None],
    threshold: float = 50.0,
) -> tuple[list[ContrastItem], dict]:
    """Persona Vectors' filter: an elicited answer is kept when it expresses the trait (score >=
    `threshold`), a suppressed one when it does not (< `threshold`), both only when coherent (>=
    `threshold`); a pair (question, contrast pair) survives only with both polarities left, so
    the direction never rests on one side's answers. Returns (kept items, what was dropped)."""

    def passes(item: ContrastItem, trait: float | None, coherence: float | None) -> str | None:
        if trait is None or coherence is None:
            return "not judged"
        if coherence < threshold:
            return "incoherent"
        if (trait >= threshold) != bool(item.label):
            return "trait not expressed" if item.label else "trait expressed when suppressed"
        return None

    reasons: dict[str, int] = {}
    by_pair: dict[tuple[str, int], list[ContrastItem]] = {}
    for item, trait, coherence in zip(items, trait_scores, coherence_scores, strict=True):
        reason = passes(item, trait, coherence)
        if reason is None:
            by_pair.setdefault((item.question, item.pair), []).append(item)
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    kept = [i for group in by_pair.values() if len({i.label for i in group}) == 2 for i in group]
    pairs = {(i.question, i.pair) for i in items}
    return kept, {
        "items": len(items),
        "kept_items": len(kept),
        "pairs": len(pairs),
        "kept_pairs": len({(i.question, i.pair) for i in kept}),
        "dropped_items": reasons,
        "threshold": threshold,
    }
