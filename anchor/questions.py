"""Question sets: expansion with an LLM, near-duplicate removal, measured diversity, and subsets
at controlled diversity.

The rival hypothesis to the identity anchor is that character training protects against EM
through the *breadth of situations* in its questions, not the trait. Testing it needs question sets
of equal size and different, measured diversity; so diversity is a number here, computed from
embeddings, and subsets are chosen to hit low, middle and high values.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor.chat import pad_token_id, render_texts
from anchor.constitution import Trait
from anchor.extract import read_rendered
from anchor.generate import Generator, SamplingConfig
from anchor.hooks import find_blocks

Embedder = Callable[[Sequence[str]], torch.Tensor]


def model_embedder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layer: int | None = None,
    progress: bool = False,
) -> Embedder:
    """Mean-pooled residual stream of the model itself (default: the middle layer). Any callable
    mapping texts to `[n, d]`, e.g. a sentence encoder's `encode`, can stand in for it."""
    chosen = len(find_blocks(model)) // 2 if layer is None else layer
    pad_id = pad_token_id(tokenizer)

    def embed(texts: Sequence[str]) -> torch.Tensor:
        tensor, _, _ = read_rendered(
            model, render_texts(tokenizer, texts), [chosen], "response_mean", pad_id, progress=progress
        )
        return tensor[:, 0]

    return embed


def sentence_encoder_embedder(model_name_or_path: str) -> Embedder:
    """A sentence-transformers encoder as the embedder (`pip install sentence-transformers`; the
    model must be local or downloadable)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "sentence_encoder_embedder needs sentence-transformers: pip install sentence-transformers "
            "(or use model_embedder, the model's own hidden states)"
        ) from err
    encoder = SentenceTransformer(model_name_or_path)
    return lambda texts: torch.as_tensor(encoder.encode(list(texts), convert_to_numpy=True))


def unit_centered(embeddings: torch.Tensor) -> torch.Tensor:
    """Hidden states share a large common direction (anisotropy) that makes every pair look alike;
    centering removes it before cosine comparisons."""
    centered = embeddings.float() - embeddings.float().mean(0, keepdim=True)
    return torch.nn.functional.normalize(centered, dim=-1)


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> float:
    n = len(embeddings)
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    similarity = unit @ unit.T
    return float(1 - (similarity.sum() - n) / (n * (n - 1)))


def effective_dimension(embeddings: torch.Tensor) -> float:
    """exp(entropy) of the normalised covariance eigenvalues: how many directions the set spreads
    over (1 = a line, d = isotropic). Scale-free, so it complements the cosine distance (how far
    apart) with shape; it is capped by the number of points minus one."""
    centered = embeddings.float() - embeddings.float().mean(0, keepdim=True)
    eigenvalues = torch.linalg.svdvals(centered) ** 2
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass(frozen=True)
class Diversity:
    mean_cosine_distance: float
    effective_dimension: float


def measure_diversity(embeddings: torch.Tensor) -> Diversity:
    return Diversity(mean_pairwise_cosine_distance(embeddings), effective_dimension(embeddings))


def near_duplicates(embeddings: torch.Tensor, threshold: float, reference: int = 0) -> list[int]:
    """Indices (>= `reference`) to drop: rows whose centered cosine similarity with any earlier kept
    row reaches `threshold`. Rows before `reference` (e.g. hand-written questions) are always kept."""
    unit = unit_centered(embeddings)
    kept = list(range(reference))
    dropped = []
    for i in range(reference, len(unit)):
        if kept and float((unit[kept] @ unit[i]).max()) >= threshold:
            dropped.append(i)
        else:
            kept.append(i)
    return dropped


LEVELS = ("low", "mid", "high")


def held_out_questions(traits: Sequence[Trait]) -> list[str]:
    """Each trait's held-out question: its last hand-written one (`Trait.questions[-1]`, not the
    last of `all_questions`, which after expansion is a generated question). Evaluation probes read
    these, so no training set may contain them."""
    return [t.questions[-1] for t in traits]


def _text_key(question: str) -> str:
    return " ".join(question.split()).casefold()


def training_pool(traits: Sequence[Trait]) -> tuple[list[str], list[int]]:
    """The questions that may be trained on and, for each, the index of its trait: every question
    of every trait (hand-written and additional) except the held-out ones, compared by text
    (whitespace and case aside), so a held-out question repeated in another trait's list, or among
    the generated ones, stays out too. A question listed twice is kept once, under its first trait."""
    seen = {_text_key(q) for q in held_out_questions(traits)}
    questions, groups = [], []
    for index, trait in enumerate(traits):
        for question in trait.all_questions:
            if _text_key(question) not in seen:
                seen.add(_text_key(question))
                questions.append(question)
                groups.append(index)
    return questions, groups


def stratum_sizes(group_sizes: Sequence[int], k: int) -> list[int]:
    """How many of k questions each group (trait) contributes: k // n each, the remainder one
    apiece to the first groups in order, so the split is the same at every diversity level and
    seed. Raises ValueError when k cannot give every group one, or a group has too few."""
    n = len(group_sizes)
    if n == 0 or k < n:
        raise ValueError(f"cannot cover {n} traits with {k} questions: every trait needs at least one")
    base, extra = divmod(k, n)
    sizes = [base + (i < extra) for i in range(n)]
    short = [
        f"trait {i} has {have}, needs {need}"
        for i, (need, have) in enumerate(zip(sizes, group_sizes))
        if have < need
    ]
    if short:
        raise ValueError(
            f"cannot take {k} questions evenly from {n} traits ({'; '.join(short)}); ask for fewer, or "
            "expand the constitution with expand_questions.py"
        )
    return sizes


def _select(unit: torch.Tensor, k: int, level: str, rng: random.Random) -> list[int]:
    """k rows of unit vectors at a diversity level (see `select_subset`)."""
    n = len(unit)
    if level == "mid":
        return sorted(rng.sample(range(n), k))
    if level == "low":
        centre = rng.randrange(n)
        return sorted((unit @ unit[centre]).argsort(descending=True, stable=True)[:k].tolist())
    # high: farthest-point sampling from a seeded start
    chosen = [rng.randrange(n)]
    distance = 1 - unit @ unit[chosen[0]]
    for _ in range(k - 1):
        distance[chosen] = -math.inf
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, 1 - unit @ unit[chosen[-1]])
    return sorted(chosen)


def select_subset(
    embeddings: torch.Tensor,
    k: int,
    level: str,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> list[int]:
    """k indices at a diversity level: "low" = a tight cluster (a seeded centre and its nearest
    neighbours), "mid" = a uniform random sample, "high" = farthest-point sampling from a seeded
    start. Distances are the cosine distances `measure_diversity` averages, so the levels order by
    that measure.

    With `groups` (one label per row, e.g. `training_pool`'s trait indices) the selection is
    stratified: every group contributes the same number of rows (`stratum_sizes`), each chosen
    within its group at the level. Coverage of the groups is then the same at every level and only
    the diversity within each group changes; without it, "low" may be a single trait's cluster."""
    if level not in LEVELS:
        raise ValueError(f"diversity level must be 'low', 'mid' or 'high', got {level!r}")
    n = len(embeddings)
    if not 0 < k <= n:
        raise ValueError(f"cannot select {k} of {n} questions")
    rng = random.Random(seed)
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    if groups is None:
        return _select(unit, k, level, rng)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} embeddings")
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    sizes = stratum_sizes([len(m) for m in members.values()], k)
    chosen = []
    for rows, size in zip(members.values(), sizes):
        chosen += [rows[j] for j in _select(unit[rows], size, level, rng)]
    return sorted(chosen)


def within_group_distance(embeddings: torch.Tensor, groups: Sequence[int]) -> float:
    """The mean over groups (of two or more rows) of each group's mean pairwise cosine distance:
    the diversity a stratified subset varies, with the spread between groups left out."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    values = [mean_pairwise_cosine_distance(embeddings[rows]) for rows in members.values() if len(rows) > 1]
    return sum(values) / len(values) if values else 0.0


EXPAND_PROMPT = (
    "Here is a character trait, written in the first person:\n\n{trait}\n\n"
    "Here are questions a person might ask an AI assistant that give it a chance to show or not show "
    "this trait:\n{examples}\n\nWrite one new question of the same kind. Change the situation: the topic, "
    "the stakes, who is asking, or the emotional tone. Reply with the question only."
)


def _clean(text: str) -> str | None:
    """The question in a generated reply: its first line up to the first '?', without list markers
    or quotes; None when there is no question of a sensible length."""
    first = text.strip().split("\n")[0].strip()
    first = re.sub(r"^(\d+[.)]|[-*])\s*", "", first).strip().strip('"').strip()
    if "?" not in first:
        return None
    question = first[: first.index("?") + 1]
    return question if 10 <= len(question) <= 300 else None


@dataclass(frozen=True)
class ExpansionConfig:
    n: int = 50  # questions per trait after expansion, hand-written included
    threshold: float = 0.9  # centered-cosine similarity at which a question counts as a near-duplicate
    shots: int = 5
    max_rounds: int = 6
    temperature: float = 0.8
    max_new_tokens: int = 60
    seed: int = 0


def expand_trait(
    trait: Trait,
    generator: Generator,
    embed: Embedder,
    config: ExpansionConfig = ExpansionConfig(),
    model_name: str = "unknown",
) -> Trait:
    """Grow a trait's questions to `config.n` (hand-written + generated), few-shot from its
    questions, dropping near-duplicates by embedding similarity. Provenance goes in
    `extra["provenance"]`, one entry per additional question."""
    questions = list(trait.questions)
    extra_q = list(trait.additional_questions)
    provenance = list(trait.extra.get("provenance", [{"source": "unknown"}] * len(extra_q)))
    rng = random.Random(config.seed)
    for round_ in range(config.max_rounds):
        missing = config.n - len(questions) - len(extra_q)
        if missing <= 0:
            break
        prompts = []
        for _ in range(missing + max(4, missing // 2)):  # over-generate: some get dropped
            pool = questions + extra_q
            examples = rng.sample(pool, min(config.shots, len(pool)))
            text = EXPAND_PROMPT.format(trait=trait.trait, examples="\n".join(f"- {q}" for q in examples))
            prompts.append([{"role": "user", "content": text}])
        sampling = SamplingConfig(config.max_new_tokens, config.temperature, seed=config.seed + round_)
        replies = generator.generate(prompts, sampling)
        existing = questions + extra_q
        candidates = list(dict.fromkeys(c for r in replies if (c := _clean(r[0])) and c not in existing))
        if not candidates:
            continue
        dropped = set(
            near_duplicates(embed(existing + candidates), config.threshold, reference=len(existing))
        )
        for offset, candidate in enumerate(candidates):
            if len(existing) + offset not in dropped and len(questions) + len(extra_q) < config.n:
                extra_q.append(candidate)
                provenance.append({"source": "generated", "model": model_name})
    return Trait(trait.trait, questions, extra_q, {**trait.extra, "provenance": provenance})


def expand_persona(
    traits: Sequence[Trait],
    generator: Generator,
    embed: Embedder,
    config: ExpansionConfig = ExpansionConfig(),
    model_name: str = "unknown",
    progress: bool = True,
) -> list[Trait]:
    """`expand_trait` for every trait, then near-duplicates across traits are dropped too (a
    question generated for one trait may repeat another trait's), which can leave a trait short
    of `config.n`."""
    expanded = [
        expand_trait(t, generator, embed, replace(config, seed=config.seed + i), model_name)
        for i, t in enumerate(tqdm(traits, desc="expand traits", disable=not progress))
    ]
    hand = [q for t in expanded for q in t.questions]
    flat = [(i, j, q) for i, t in enumerate(expanded) for j, q in enumerate(t.additional_questions)]
    dropped = set(
        near_duplicates(embed(hand + [q for _, _, q in flat]), config.threshold, reference=len(hand))
    )
    kept = {(i, j) for k, (i, j, _) in enumerate(flat) if len(hand) + k not in dropped}
    return [
        Trait(
            t.trait,
            t.questions,
            [q for j, q in enumerate(t.additional_questions) if (i, j) in kept],
            {**t.extra, "provenance": [p for j, p in enumerate(t.extra["provenance"]) if (i, j) in kept]},
        )
        for i, t in enumerate(expanded)
    ]
