"""Persona contrast sets: the same questions answered under a persona-eliciting and a
persona-suppressing system prompt, read as response-averaged activations (the persona-vector
recipe). They are read twice: without the system prompt (`bare_conversation`, the default: the
trait must be in the response) and with it (`conversation`, as Persona Vectors reads them).

The answers are sampled from a model (`sample_contrast`) or read from a file in the layout
`ContrastItem.to_json` writes, one JSON object per line (`load_contrast_set`): a user's set, or
the answers written for a shipped persona, whose `system` is the prompt each answer illustrates."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor.chat import Conversation
from anchor.constitution import ContrastPair, Persona, written_answers_file
from anchor.extract import Activations, extract
from anchor.generate import Generator, SamplingConfig
from anchor.store import read_jsonl

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


FIELDS = {"question": str, "pair": int, "label": int, "system": str, "response": str}


def load_contrast_set(path: str | os.PathLike) -> list[ContrastItem]:
    """A contrast set from JSONL; a bad line is an error naming the file, the line and the field,
    and a set with one polarity only (no direction to fit) is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such contrast set")
    items = []
    for where, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with fields {', '.join(FIELDS)}")
        for name, kind in FIELDS.items():
            value = row.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.strip()):
                raise ValueError(f"{where}: field '{name}' is {value!r}, not a non-empty {kind.__name__}")
        if row["label"] not in (0, 1):
            raise ValueError(f"{where}: field 'label' is {row['label']!r}; 1 = elicited, 0 = suppressed")
        items.append(ContrastItem(**{name: row[name] for name in FIELDS}))
    if len({i.label for i in items}) < 2:
        raise ValueError(f"{path}: {len(items)} answers, not both labels (1 = elicited, 0 = suppressed)")
    return items


def select_answers(
    items: Sequence[ContrastItem], questions: Sequence[str], per_question: int
) -> list[ContrastItem]:
    """The items answering `questions`, at most the first `per_question` of each polarity per
    question (in file order), so a written set scales with the same knobs as a sampled one. A
    question without both polarities is an error: its answers would tilt the direction."""
    wanted, seen, kept = set(questions), {}, []
    for item in items:
        key = (item.question, item.label)
        if item.question in wanted and seen.get(key, 0) < per_question:
            seen[key] = seen.get(key, 0) + 1
            kept.append(item)
    lacking = [q for q in questions if not (seen.get((q, 0)) and seen.get((q, 1)))]
    if lacking:
        raise ValueError(f"the contrast set has no elicited and suppressed answer to {lacking[0]!r}")
    return kept


def written_contrast(
    path: str | os.PathLike, persona: Persona, questions_per_trait: int, per_question: int
) -> list[ContrastItem]:
    """A persona's written answers at a run's scale: to each trait's first `questions_per_trait`
    hand-written questions (the ones a written set answers), `per_question` per polarity."""
    questions = [q for t in persona.traits for q in t.questions[:questions_per_trait]]
    try:
        return select_answers(load_contrast_set(path), questions, per_question)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


ANSWER_SOURCES = ("auto", "written", "sampled")


def written_answers_for(
    persona: str, model: str, choice: str = "auto", own_pairs: bool = False
) -> Path | None:
    """The persona's written answers (`<name>.answers.jsonl`) when a run reads them instead of
    sampling: asked for (`written`), or `auto` on the default model when the persona ships them
    and no pairs of the user's own (`own_pairs`) are to be sampled under. The 135M default model
    barely follows the eliciting prompts: its sampled sets gave held-out probe accuracies at chance
    (0.60 on 10 answers, where a coin reaches 0.76; 0.35-0.57 at layer 20 on 40), so a direction
    fitted to them is noise. Any other model samples, as Persona Vectors does."""
    if choice not in ANSWER_SOURCES:
        raise ValueError(f"contrast answers {choice!r}: choose from {', '.join(ANSWER_SOURCES)}")
    if choice == "sampled":
        return None
    shipped = written_answers_file(persona)
    if choice == "written":
        if shipped is None:
            raise ValueError(
                f"persona {str(persona)!r} ships no written answers (<name>.answers.jsonl beside its "
                "constitution); sample them instead"
            )
        return shipped
    return shipped if model == "default" and not own_pairs else None


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
