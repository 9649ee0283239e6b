"""An assistant axis: a variant of the one in Lu et al. (2026), "The Assistant Axis".

Per layer, the mean activation of the model's own default answers (no system prompt) minus the
mean of per-role mean activations, the roles being characters it was asked to play (`anchor.roles`)
on the same everyday questions. The sign points toward the default assistant, so a model that
drifts out of its assistant voice moves down the axis.

What makes this a variant (and how it reads like the rest of the project): every role is weighted
equally, however many of its answers survive; answers are response-averaged; and every answer is
read WITHOUT the system prompt that produced it, as the project's drift reads are, so a role can
only register through what the answer says and how, never through the instruction in context.
An optional `keep` filter stands in for a judge of whether an answer is fully in role.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor.chat import Conversation
from anchor.extract import Activations, extract
from anchor.generate import Generator, SamplingConfig
from anchor.roles import Role
from probes.directions import DirectionStack

# (role, question, answer) -> whether the answer is fully in role; applied to role answers only.
RoleFilter = Callable[[Role, str, str], bool]

METHOD = (
    "assistant axis, a variant of Lu et al. (2026): mean of default answers minus the mean of "
    "per-role means (roles weighted equally), response-averaged, read without the system prompt"
)


@dataclass(frozen=True)
class AxisJob:
    """One prompt to sample: a shared question, asked of a role under one of its phrasings, or of
    the model's default voice (no role, no system prompt)."""

    question: str
    role: Role | None = None
    phrasing: int | None = None  # index into role.phrasings

    @property
    def default(self) -> bool:
        return self.role is None

    @property
    def system(self) -> str | None:
        return None if self.role is None else self.role.phrasings[self.phrasing or 0]

    @property
    def prompt(self) -> Conversation:
        user = [{"role": "user", "content": self.question}]
        return user if self.system is None else [{"role": "system", "content": self.system}, *user]


@dataclass(frozen=True)
class AxisItem:
    """A sampled answer. `role` is the role's name, None for a default answer."""

    question: str
    answer: str
    role: str | None
    category: str | None = None
    system: str | None = None  # the prompt it was sampled under; never read
    phrasing: int | None = None

    @property
    def default(self) -> bool:
        return self.role is None

    @property
    def bare_conversation(self) -> Conversation:
        """Question and answer only: the read of both default and role answers."""
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.answer}]

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "role": self.role,
            "category": self.category,
            "system": self.system,
            "phrasing": self.phrasing,
            "default": self.default,
        }


def role_prompts(
    roles: Sequence[Role],
    questions: Sequence[str],
    phrasings_per_role: int = 3,
    questions_per_role: int | None = None,
    seed: int = 0,
) -> list[AxisJob]:
    """The generation jobs: every question once in the default voice, then for each role its
    chosen phrasings crossed with its chosen questions (None = all questions). The choice is
    seeded per role by name, so adding a role leaves the others' prompts as they were."""
    if not roles or not questions:
        raise ValueError("the assistant axis needs at least one role and one question")
    if phrasings_per_role < 1 or (questions_per_role is not None and questions_per_role < 1):
        raise ValueError("phrasings_per_role and questions_per_role must be >= 1")
    jobs = [AxisJob(q) for q in questions]
    for role in roles:
        rng = random.Random(f"{seed}:{role.name}")
        phrasings = sorted(
            rng.sample(range(len(role.phrasings)), min(phrasings_per_role, len(role.phrasings)))
        )
        n_questions = (
            len(questions) if questions_per_role is None else min(questions_per_role, len(questions))
        )
        asked = rng.sample(list(questions), n_questions)
        jobs += [AxisJob(q, role, p) for p in phrasings for q in asked]
    return jobs


def sample_axis_answers(
    jobs: Sequence[AxisJob],
    generator: Generator,
    samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    keep: RoleFilter | None = None,
) -> list[AxisItem]:
    """Answers to every job, `samples` each. Empty answers are dropped; role answers are also
    dropped where `keep` says they are not fully in role (default answers are never filtered:
    the default voice is what the model does unprompted, whatever that is)."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=samples, seed=seed)
    replies = generator.generate([job.prompt for job in jobs], config)
    items = []
    for job, answers in zip(jobs, replies, strict=True):
        for answer in answers:
            if not answer.strip():
                continue
            if job.role is not None and keep is not None and not keep(job.role, job.question, answer):
                continue
            items.append(_item(job, answer))
    return items


def _item(job: AxisJob, answer: str) -> AxisItem:
    if job.role is None:
        return AxisItem(job.question, answer, None)
    return AxisItem(job.question, answer, job.role.name, job.role.category, job.system, job.phrasing)


def assistant_axis(
    default_acts: torch.Tensor, role_acts: torch.Tensor, role_ids: Sequence[object]
) -> torch.Tensor:
    """`[n, L, d]` default reads and `[m, L, d]` role reads labelled by `role_ids` -> `[L, d]`:
    mean of the defaults minus the mean over roles of each role's mean, so a role that kept more
    answers (or was asked more often) counts no more than one that kept few."""
    if default_acts.ndim != 3 or role_acts.ndim != 3 or default_acts.shape[1:] != role_acts.shape[1:]:
        raise ValueError(
            f"expected [n, L, d] and [m, L, d] reads, got {list(default_acts.shape)} and {list(role_acts.shape)}"
        )
    if len(role_ids) != role_acts.shape[0]:
        raise ValueError(f"{len(role_ids)} role ids for {role_acts.shape[0]} role reads")
    if default_acts.shape[0] == 0 or role_acts.shape[0] == 0:
        raise ValueError("the assistant axis needs at least one default and one role read")
    means = []
    for role in dict.fromkeys(role_ids):
        rows = torch.tensor([r == role for r in role_ids])
        means.append(role_acts[rows].mean(0))
    return default_acts.mean(0) - torch.stack(means).mean(0)


def fit_assistant_axis(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[AxisItem],
    layers: int | Sequence[int] | None = None,
    meta: dict | None = None,
    **extract_kwargs,
) -> DirectionStack:
    """Read every item without its system prompt and return the axis at each layer read."""
    acts: Activations = extract(
        model, tokenizer, [i.bare_conversation for i in items], layers=layers, **extract_kwargs
    )
    is_default = torch.tensor([i.default for i in items])
    role_ids = [i.role for i in items if not i.default]
    axis = assistant_axis(acts.tensor[is_default], acts.tensor[~is_default], role_ids)
    summary = {
        "method": METHOD,
        "sign": "positive toward the default assistant",
        "default_items": int(is_default.sum()),
        "role_items": len(role_ids),
        "roles": len(set(role_ids)),
        "prompt_hash": acts.prompt_hash,
    }
    return DirectionStack(acts.layers, axis, {**summary, **(meta or {})})
