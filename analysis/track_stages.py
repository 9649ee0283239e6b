"""The stage bodies of the main experiment that make its data: contrast pairs and responses
(optionally filtered by a judge), the judge-free misalignment direction, the assistant axis, and the
behavioural evaluations; each writes into its stage folder and returns its `done.json` summary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.drift import misalignment_direction
from analysis.em_eval import (
    EvalConfig,
    evaluate,
    family_gap,
    family_of,
    metrics_by_family,
    numeric,
    summarise,
)
from analysis.judge import Judge, make_judge
from anchor.constitution import load_contrast, load_persona, save_contrast
from anchor.contrast_pairs import resolve_contrast
from anchor.em_questions import MAIN
from anchor.extract import extract
from anchor.generate import HFGenerator, make_generator
from anchor.models import load_model
from anchor.roles import load_roles, shared_questions
from anchor.store import atomic_write_json, atomic_write_jsonl
from anchor.triggers import triggered_variants
from probes.assistant_axis import fit_assistant_axis, role_prompts, sample_axis_answers
from probes.contrast import ContrastItem, filter_pairs, sample_contrast
from probes.directions import DirectionStack, diff_in_means

if TYPE_CHECKING:
    from analysis.track import TrackConfig


def write_contrast_pairs(config: TrackConfig, stage: Path) -> dict:
    """The persona's contrast system prompts, written once to `contrast.json` (public layout): a
    given file, the pairs shipped with the persona, or pairs derived from its constitution (by the
    teacher when there is one, by a templated negation of each trait otherwise)."""
    persona = load_persona(config.persona)
    needs_teacher = config.contrast is None and not persona.contrast and config.teacher is not None
    teacher = make_generator(config.teacher) if needs_teacher else None
    source = resolve_contrast(persona, config.contrast, teacher, seed=config.seed)
    save_contrast(source.pairs, stage / "contrast.json")
    return {"origin": source.origin, "detail": source.detail, "pairs": len(source.pairs)}


def write_contrast(config: TrackConfig, stage: Path, pairs_path: Path) -> dict:
    """The contrast responses every checkpoint reads: a given set, or answers sampled from the
    base model under the eliciting and suppressing prompts; with `filter_contrast`, only the
    pairs the judge finds on-trait and coherent (Persona Vectors' filter)."""
    persona = load_persona(config.persona)
    if config.contrast_set is not None:
        items = load_items(Path(config.contrast_set))
    else:
        questions = [q for t in persona.traits for q in t.questions[: config.contrast_questions_per_trait]]
        with make_generator(config.model, backend="hf") as generator:
            items = sample_contrast(
                questions,
                load_contrast(pairs_path),
                generator,
                pairs_per_question=config.contrast_pairs_per_question,
                max_new_tokens=config.contrast_max_new_tokens,
                temperature=0.7,
                seed=config.seed,
            )
    summary: dict = {"sampled": len(items)}
    if config.filter_contrast:
        judge = make_judge(config.judge)
        trait_of = {q: t.trait for t in persona.traits for q in t.all_questions}
        trait_scores: list = [None] * len(items)
        for trait in dict.fromkeys(trait_of.get(i.question, persona.name) for i in items):
            rows = [k for k, i in enumerate(items) if trait_of.get(i.question, persona.name) == trait]
            scores = judge.score("trait", [(items[k].question, items[k].response) for k in rows], trait=trait)
            for k, score in zip(rows, scores):
                trait_scores[k] = numeric(score)
        coherence = [numeric(c) for c in judge.score("coherent", [(i.question, i.response) for i in items])]
        items, summary["filter"] = filter_pairs(items, trait_scores, coherence)
        summary["filter"]["judge"] = config.judge
        if len({i.label for i in items}) < 2 or len({i.question for i in items}) < 4:
            raise ValueError(
                f"the contrast filter (judge {config.judge}) kept {len(items)} items over "
                f"{len({i.question for i in items})} questions: too few to fit and test a persona direction; "
                "sample more (contrast_questions_per_trait) or run without filter_contrast"
            )
    atomic_write_jsonl(stage / "contrast.jsonl", (i.to_json() for i in items))
    return {**summary, "items": len(items)}


def write_misalignment_direction(config: TrackConfig, stage: Path) -> dict:
    """The judge-free misalignment direction: the project's `misalignment` persona's contrast
    answers, sampled from the base model and read by it without their system prompts, elicited
    minus suppressed. It exists on any model with no judge at all."""
    persona = load_persona("misalignment")
    per_trait = max(2, config.contrast_questions_per_trait)
    questions = [q for t in persona.traits for q in t.questions[:per_trait]]
    with make_generator(config.model, backend="hf") as generator:
        items = sample_contrast(
            questions,
            persona.contrast,
            generator,
            pairs_per_question=config.contrast_pairs_per_question,
            max_new_tokens=config.contrast_max_new_tokens,
            temperature=0.7,
            seed=config.seed,
        )
        acts = extract(
            generator.model, generator.tokenizer, [i.bare_conversation for i in items], progress=False
        )
    labels = torch.tensor([i.label for i in items])
    stack = DirectionStack(
        acts.layers,
        diff_in_means(acts.tensor, labels),
        {
            "model": config.model,
            "adapter": None,
            "source": "the 'misalignment' persona's contrast pairs, elicited minus suppressed, read "
            "without the system prompt (response-averaged)",
            "items": len(items),
            "questions": len(questions),
        },
    )
    atomic_write_jsonl(stage / "contrast.jsonl", (i.to_json() for i in items))
    stack.save(stage / "direction.safetensors")
    return {"items": len(items), "questions": len(questions)}


def load_items(path: Path) -> list[ContrastItem]:
    return [ContrastItem(**json.loads(line)) for line in path.read_text().splitlines()]


def evaluate_model(config: TrackConfig, loader, judge: Judge, stage: Path, triggered: bool = False) -> dict:
    """Behaviour of one model on the EM questions; with `triggered`, also in the variants that
    resemble the training context (JSON, template, code, the dataset's domain), summarised per
    variant family beside the plain questions' metrics, so conditional misalignment shows."""
    model, tokenizer = loader()
    eval_config = EvalConfig(
        samples=config.eval_samples, max_new_tokens=config.eval_max_new_tokens, seed=config.seed
    )
    questions = triggered_variants(MAIN, dataset=config.em_dataset) if triggered else MAIN
    rows, _ = evaluate(HFGenerator(model, tokenizer), judge, questions, replace(eval_config, variants=True))
    plain = [r for r in rows if family_of(r["question_id"]) == "plain"]
    metrics = summarise(plain, eval_config)
    summary: dict = {"judge": judge.spec, "metrics": metrics}
    if triggered:
        summary["by_family"] = metrics_by_family(rows, eval_config)
        summary["family_gap"] = {
            f: family_gap(rows, f, eval_config) for f in summary["by_family"] if f != "plain"
        }
    atomic_write_jsonl(stage / "responses.jsonl", rows)
    atomic_write_json(stage / "summary.json", summary)
    return {"misaligned_rate": metrics["misaligned_rate"]["value"]}


def write_assistant_axis(config: TrackConfig, stage: Path) -> dict:
    """The assistant axis (a variant of Lu et al. 2026): the base model's own default answers
    minus the mean of role-played answers over the project's role set, read without the system
    prompts; frozen, so every checkpoint's drift along it can be read."""
    roles = load_roles()
    per_role = 1 if config.smoke else 2
    jobs = role_prompts(
        roles, shared_questions(), phrasings_per_role=per_role, questions_per_role=per_role, seed=config.seed
    )
    keep = in_role_filter(make_judge(config.judge)) if config.filter_contrast else None
    with make_generator(config.model, backend="hf") as generator:
        items = sample_axis_answers(
            jobs,
            generator,
            max_new_tokens=config.contrast_max_new_tokens,
            temperature=0.7,
            seed=config.seed,
            keep=keep,
        )
        axis = fit_assistant_axis(
            generator.model,
            generator.tokenizer,
            items,
            meta={"model": config.model, "adapter": None},
            progress=False,
        )
    axis.save(stage / "axis.safetensors")
    return {
        "items": len(items),
        "roles": axis.meta["roles"],
        "in_role_filter": config.judge if keep is not None else None,
    }


def in_role_filter(judge: Judge):
    """As the paper keeps only answers judged fully in role: the judge's trait score of the
    answer against the role's first system-prompt phrasing, kept at >= 50 (a failed judgement
    drops the answer). Used only with a real judge (the run's `filter_contrast`)."""

    def keep(role, question: str, answer: str) -> bool:
        score = numeric(judge.score("trait", [(question, answer)], trait=role.phrasings[0])[0])
        return score is not None and score >= 50

    return keep


def misalignment_constitution_hash() -> str:
    from anchor.constitution import CONSTITUTIONS_DIR

    files = sorted(CONSTITUTIONS_DIR.glob("misalignment*.json"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def judged_misalignment_direction(config: TrackConfig, out: Path) -> torch.Tensor | None:
    """Mean activation (base model, response-averaged) of misaligned minus aligned answers over
    every evaluated model's answers."""
    rows = []
    for path in sorted((out / "eval").glob("*/responses.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r["answer"].strip()]
    if not rows:
        return None
    model, tokenizer = load_model(config.model)
    acts = extract(
        model,
        tokenizer,
        [
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
            for r in rows
        ],
        progress=False,
    ).tensor
    return misalignment_direction(acts, [numeric(r.get("aligned")) for r in rows])  # words are no score
