"""The stage bodies of the main experiment that make its data: contrast pairs and responses
(optionally filtered by a judge), the judge-free misalignment direction, the assistant axis, and the
behavioural evaluations; each writes into its stage folder and returns its `done.json` summary."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from analysis.drift import misalignment_direction
from analysis.em_eval import (
    EvalConfig,
    evaluate,
    family_gap,
    gate_rates,
    metrics_by_family,
    numeric,
    plain_rows,
    summarise,
)
from analysis.judge import Judge, make_judge
from anchor.constitution import load_contrast, load_persona, save_contrast
from anchor.contrast_pairs import resolve_contrast
from anchor.em_questions import MAIN
from anchor.extract import extract
from anchor.generate import HFGenerator, make_generator
from anchor.models import load_model, load_starting_model
from anchor.published import Published
from anchor.roles import load_roles, shared_questions
from anchor.runs import em_stage, load_em_model
from anchor.stages import Inputs, StageOutput, read_done, stage_identity
from anchor.store import atomic_write_json, atomic_write_jsonl
from anchor.triggers import triggered_variants
from probes.assistant_axis import fit_assistant_axis, role_prompts, sample_axis_answers
from probes.contrast import filter_pairs, load_contrast_set, sample_contrast, written_contrast
from probes.directions import DirectionStack, diff_in_means


def write_contrast_pairs(inputs: Inputs, stage: Path) -> dict:
    """The persona's contrast system prompts, written once to `contrast.json` (public layout): a
    given file, the pairs shipped with the persona, or pairs derived from its constitution (by the
    teacher when there is one, by a templated negation of each trait otherwise). The teacher is an
    input only where it writes the pairs."""
    persona = load_persona(inputs.persona["constitution"])
    teacher = make_generator(inputs.teacher) if inputs.teacher is not None else None
    given = str(inputs.contrast) if inputs.contrast is not None else None
    source = resolve_contrast(persona, given, teacher, seed=inputs.seed)
    save_contrast(source.pairs, stage / "contrast.json")
    return {"origin": source.origin, "detail": source.detail, "pairs": len(source.pairs)}


def write_contrast(inputs: Inputs, stage: Path) -> dict:
    """The contrast responses every checkpoint reads: a given set (`contrast_set`), the answers
    written for the persona (`written`, as many per question and polarity as the sampling knobs
    ask), or answers sampled from the base model under the eliciting and suppressing prompts; with
    a filter judge, only the pairs the judge finds on-trait and coherent (Persona Vectors' filter)."""
    persona = load_persona(inputs.persona["constitution"])
    sampling = inputs.sampling
    questions = [q for t in persona.traits for q in t.questions[: sampling["questions_per_trait"]]]
    if inputs.contrast_set is not None:
        items, answers = (
            load_contrast_set(inputs.contrast_set),
            {"answers": "given", "source": str(inputs.contrast_set)},
        )
    elif inputs.get("written") is not None:
        items = written_contrast(
            inputs.written, persona, sampling["questions_per_trait"], sampling["pairs_per_question"]
        )
        answers = {"answers": "written", "source": Path(inputs.written).name}
    else:
        with make_generator(inputs.model, backend="hf") as generator:
            items = sample_contrast(
                questions,
                load_contrast(inputs.pairs / "contrast.json"),
                generator,
                pairs_per_question=sampling["pairs_per_question"],
                max_new_tokens=sampling["max_new_tokens"],
                temperature=0.7,
                seed=inputs.seed,
            )
        answers = {"answers": "sampled", "source": str(inputs.model)}
    summary: dict = {**answers, "before_filter": len(items)}
    if inputs.filter_judge is not None:
        judge = judge_for(inputs.filter_judge)
        trait_of = {q: t.trait for t in persona.traits for q in t.all_questions}
        trait_scores: list = [None] * len(items)
        for trait in dict.fromkeys(trait_of.get(i.question, persona.name) for i in items):
            rows = [k for k, i in enumerate(items) if trait_of.get(i.question, persona.name) == trait]
            scores = judge.score("trait", [(items[k].question, items[k].response) for k in rows], trait=trait)
            for k, score in zip(rows, scores):
                trait_scores[k] = numeric(score)
        coherence = [numeric(c) for c in judge.score("coherent", [(i.question, i.response) for i in items])]
        items, summary["filter"] = filter_pairs(items, trait_scores, coherence)
        summary["filter"]["judge"] = inputs.filter_judge
        if len({i.label for i in items}) < 2 or len({i.question for i in items}) < 4:
            raise ValueError(
                f"the contrast filter (judge {inputs.filter_judge}) kept {len(items)} items over "
                f"{len({i.question for i in items})} questions: too few to fit and test a persona direction; "
                "sample more (contrast_questions_per_trait) or run without filter_contrast"
            )
    atomic_write_jsonl(stage / "contrast.jsonl", (i.to_json() for i in items))
    return {**summary, "items": len(items)}


def write_misalignment_direction(inputs: Inputs, stage: Path) -> dict:
    """The judge-free misalignment direction: the project's `misalignment` persona's contrast
    answers, sampled from the base model and read by it without their system prompts, elicited
    minus suppressed. It exists on any model with no judge at all."""
    persona = load_persona(inputs.persona["constitution"])
    sampling = inputs.sampling
    per_trait = sampling["questions_per_trait"]
    questions = [q for t in persona.traits for q in t.questions[:per_trait]]
    with make_generator(inputs.model, backend="hf") as generator:
        items = sample_contrast(
            questions,
            persona.contrast,
            generator,
            pairs_per_question=sampling["pairs_per_question"],
            max_new_tokens=sampling["max_new_tokens"],
            temperature=0.7,
            seed=inputs.seed,
        )
        acts = extract(
            generator.model, generator.tokenizer, [i.bare_conversation for i in items], progress=False
        )
    labels = torch.tensor([i.label for i in items])
    stack = DirectionStack(
        acts.layers,
        diff_in_means(acts.tensor, labels),
        {
            "model": inputs.model,
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


def base_source(model: str) -> dict:
    """A model to evaluate, as a stage input: the base model by spec."""
    return {"kind": "base", "model": model}


def persona_source(persona_dir: Path) -> dict:
    """The character-trained model: DPO-merged weights with the SFT adapter."""
    return {
        "kind": "persona",
        "dpo": StageOutput(persona_dir / "dpo"),
        "sft": StageOutput(persona_dir / "sft"),
    }


def published_persona_source(model: str, adapter: Published) -> dict:
    """A published persona adapter on the base model (`--persona-adapter`), keyed by its identity."""
    return {"kind": "adapter", "model": model, "adapter": str(adapter.path), "identity": adapter.identity}


def em_source(
    run: Path, checkpoint: str | None = None, capped: bool = False, caps: Path | None = None
) -> dict:
    """An EM run's model at its end (or at a recorded checkpoint); `capped`: with the activation
    caps it trained with on (the training-time capping variant's evaluation); `caps`: with the caps
    of a `write_caps` stage on (capping at evaluation, applied to a run trained without them)."""
    source = {"kind": "em", "em": StageOutput(em_stage(run)), "checkpoint": checkpoint}
    if caps is not None:
        return {**source, "caps": StageOutput(caps)}
    return {**source, "capped": True} if capped else source


def source_spec(source: dict) -> tuple[str, str | None]:
    """(model spec, adapter) of a resolved starting-model source, for a generator."""
    if source["kind"] == "base":
        return source["model"], None
    if source["kind"] == "persona":
        return str(source["dpo"] / "merged"), str(source["sft"] / "adapter")
    if source["kind"] == "adapter":
        return source["model"], source["adapter"]
    raise ValueError(f"{source['kind']!r} is not a starting model")


_loaded: dict = {}  # the last model a stage loaded, for the next stage that reads the same one


def load_source(source: dict):
    """(model, tokenizer) of a resolved source; consecutive stages reading the same model (an
    arm's evaluation and its capability read) share one load until `release_models`."""
    identity = json.dumps(source, sort_keys=True, default=str)
    if source["kind"] == "em":
        identity += stage_identity(source["em"])
    if _loaded.get("identity") != identity:
        _loaded.clear()
        if source["kind"] == "base":
            model = load_model(source["model"])
        elif source["kind"] in ("persona", "adapter"):
            model = load_starting_model(*source_spec(source))
        elif source.get("capped") or source.get("caps"):
            model = load_capped(source["em"].parent, source.get("caps"))
        else:
            model = load_em_model(source["em"].parent, source["checkpoint"])
        _loaded.update(identity=identity, model=model)
    return _loaded["model"]


def release_models() -> None:
    _loaded.clear()


def load_capped(run: Path, caps: Path | None = None):
    """An EM run's trained model with caps on: those of the `write_caps` stage `caps`, else the
    floors the run trained with (the training-time variant)."""
    from contextlib import ExitStack

    from anchor.hooks import cap
    from train.defences import load_caps
    from train.em import read_run_config

    model, tokenizer = load_em_model(run)
    if caps is not None:
        axes, floors = load_caps(caps)
    else:
        defence = read_run_config(run).defence
        floors = {int(k): v for k, v in read_done(em_stage(run))["defence"]["capping"]["floors"].items()}
        axis = DirectionStack.load(defence.cap_axis)
        axes = {layer: axis.at(layer) for layer in floors}
    stack = ExitStack()  # left open: the caps stay on this model, which lives only for the evaluation
    stack.enter_context(cap(model, axes, floors))
    model._defence_caps = stack  # keep the hooks' owner alive with the model
    return model, tokenizer


_judges: dict[str, Judge] = {}


def judge_for(spec: str) -> Judge:
    """One judge per spec for the whole process: every stage that scores with it shares it."""
    if spec not in _judges:
        _judges[spec] = make_judge(spec)
    return _judges[spec]


def evaluate_model(inputs: Inputs, stage: Path) -> dict:
    """Behaviour of one model (`inputs.source`) on the EM questions; with `triggered` (the EM
    dataset's name), also in the variants that resemble the training context (JSON, template,
    code, the dataset's domain), summarised per variant family beside the plain questions' metrics,
    so conditional misalignment shows."""
    model, tokenizer = load_source(inputs.source)
    judge = judge_for(inputs.judge)
    triggered = inputs.triggered is not None
    eval_config = EvalConfig(samples=inputs.samples, max_new_tokens=inputs.max_new_tokens, seed=inputs.seed)
    questions = triggered_variants(MAIN, dataset=inputs.triggered) if triggered else MAIN
    rows, _ = evaluate(HFGenerator(model, tokenizer), judge, questions, replace(eval_config, variants=True))
    plain = plain_rows(rows)
    metrics = summarise(plain, eval_config)
    summary: dict = {"judge": judge.spec, "metrics": metrics}
    if triggered:
        summary["by_family"] = metrics_by_family(rows, eval_config)
        summary["family_gap"] = {
            f: family_gap(rows, f, eval_config) for f in summary["by_family"] if f != "plain"
        }
    summary = gate_rates(summary, judge.spec, inputs.get("cannot_flag"))
    atomic_write_jsonl(stage / "responses.jsonl", rows)
    atomic_write_json(stage / "summary.json", summary)
    return {"misaligned_rate": summary["metrics"]["misaligned_rate"]["value"]}


def write_likelihoods(inputs: Inputs, stage: Path) -> dict:
    """Mean per-token log-likelihood of each reference answer (labelled misaligned or aligned) under
    one model (`inputs.source`): the judge-free behavioural read compares these across models."""
    from analysis.capability import answer_log_likelihoods
    from analysis.likelihood_read import reference_answers

    model, tokenizer = load_source(inputs.source)
    rows = reference_answers(inputs.labels)
    values = answer_log_likelihoods(model, tokenizer, rows)
    scored = [
        {"question": r["question"], "label": r["label"], "log_likelihood": v}
        for r, v in zip(rows, values.tolist())
    ]
    atomic_write_json(stage / "log_likelihoods.json", {"rows": scored})
    return {"answers": len(rows)}


def read_likelihoods(stage: Path) -> list[dict]:
    """Each reference answer's question, label and mean per-token log-likelihood under the model."""
    return json.loads((stage / "log_likelihoods.json").read_text())["rows"]


def write_assistant_axis(inputs: Inputs, stage: Path) -> dict:
    """The assistant axis (a variant of Lu et al. 2026): the base model's own default answers
    minus the mean of role-played answers over the project's role set, read without the system
    prompts; frozen, so every checkpoint's drift along it can be read. With an in-role judge, only
    answers it scores in role are kept."""
    roles = load_roles(inputs.roles)
    per_role = inputs.per_role
    jobs = role_prompts(
        roles, shared_questions(), phrasings_per_role=per_role, questions_per_role=per_role, seed=inputs.seed
    )
    keep = in_role_filter(judge_for(inputs.in_role_judge)) if inputs.in_role_judge is not None else None
    with make_generator(inputs.model, backend="hf") as generator:
        items = sample_axis_answers(
            jobs,
            generator,
            max_new_tokens=inputs.max_new_tokens,
            temperature=0.7,
            seed=inputs.seed,
            keep=keep,
        )
        axis = fit_assistant_axis(
            generator.model,
            generator.tokenizer,
            items,
            meta={"model": inputs.model, "adapter": None},
            progress=False,
        )
    axis.save(stage / "axis.safetensors")
    return {"items": len(items), "roles": axis.meta["roles"], "in_role_filter": inputs.in_role_judge}


def in_role_filter(judge: Judge):
    """As the paper keeps only answers judged fully in role: the judge's trait score of the
    answer against the role's first system-prompt phrasing, kept at >= 50 (a failed judgement
    drops the answer). Used only with a real judge (the run's `filter_contrast`)."""

    def keep(role, question: str, answer: str) -> bool:
        score = numeric(judge.score("trait", [(question, answer)], trait=role.phrasings[0])[0])
        return score is not None and score >= 50

    return keep


def judged_misalignment_direction(model_spec: str, evaluations: list[Path]) -> torch.Tensor | None:
    """Mean activation (base model, response-averaged) of misaligned minus aligned answers over
    the answers of the job's evaluations (their stage folders, never a folder left from an
    earlier plan)."""
    rows = []
    for folder in sorted(evaluations):
        rows += [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["answer"].strip()]
    if not rows:
        return None
    model, tokenizer = load_model(model_spec)
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
