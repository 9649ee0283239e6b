"""The main experiment, end to end and resumable: character-train a persona, EM fine-tune the
persona model and the base model on corrupted data and the persona model on its secure control,
record activations at every checkpoint, compute drift metrics, evaluate behaviour, plot, report.

Run directory (`runs/<persona>-<model>-<dataset>-s<seed>/`):
    config.json
    ../persona/<persona>-<model>-<preset>-s<seed>/   character training (train/persona.py layout;
                                     shared with train_persona.py's default, or --persona-run)
    contrast_pairs/contrast.json     the contrast system prompts ({"elicit": [...], "suppress": [...]}):
                                     shipped with the persona, given (--contrast) or derived once
    contrast/contrast.jsonl          persona contrast responses, sampled once from the base model
    em_persona/ em_base/ em_control/ EM runs (train/em.py layout), same probe sets
    eval/<model>/                    EM evaluation: responses.jsonl, summary.json
    analysis/                        metrics.json, directions.safetensors, plots/*.png
    report.html
Every stage has a `done.json` keyed by its config; rerunning skips what is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from analysis import dashboard, plots
from analysis.calibration import describe
from analysis.contrast_quality import contrast_quality, contrast_table
from analysis.drift import misalignment_direction
from analysis.drift_report import BARE, BASE, CONTROL, PERSONA, compute_drift, step_of
from analysis.em_eval import (
    EvalConfig,
    evaluate,
    family_gap,
    family_of,
    metrics_by_family,
    numeric,
    summarise,
)
from analysis.headline import RUN_NAMES, headline, null_sentences, pool_seeds
from analysis.inputs import check_track_inputs
from analysis.judge import Judge, make_judge
from analysis.monitor import drift_detector
from analysis.report import Table, write_report
from anchor.constitution import load_contrast, load_persona, save_contrast
from anchor.contrast_pairs import resolve_contrast
from anchor.em_questions import MAIN
from anchor.extract import extract
from anchor.generate import HFGenerator, make_generator
from anchor.models import load_model
from anchor.roles import ROLES_FILE, load_roles, shared_questions
from anchor.store import ActivationStore, atomic_write_json, atomic_write_jsonl
from anchor.triggers import triggered_variants
from probes.assistant_axis import fit_assistant_axis, role_prompts, sample_axis_answers
from probes.contrast import ContrastItem, filter_pairs, sample_contrast
from probes.directions import Directions, DirectionStack, diff_in_means, fit_directions
from train.em import (
    EMRunConfig,
    checkpoints,
    em_probe_sets,
    em_stage_config,
    finetune_em,
    load_em_model,
    load_starting_model,
)
from train.launch import launch
from train.persona import (
    SMOKE_NEUTRAL_PROBES,
    STAGES,
    TRAINING_STAGES,
    PersonaRunConfig,
    default_preset,
    stage_configs,
    train_persona,
)
from train.stages import completed, run_stage, stage_identity

RUNS = {PERSONA: "em_persona", BASE: "em_base", CONTROL: "em_control"}


@dataclass(frozen=True)
class TrackConfig:
    persona: str
    model: str = "default"
    em_dataset: str = "insecure"
    control: str = "secure"
    seed: int = 0
    smoke: bool = False
    judge: str = "hf:default"
    persona_run: str | None = None  # reuse a finished train_persona.py run
    checkpoint_every: int | None = None  # default: the EM preset's
    em_rows: int | None = None  # default: the EM preset's
    contrast_questions_per_trait: int = 2
    contrast_pairs_per_question: int = 1
    contrast_max_new_tokens: int = 48
    eval_samples: int = 4
    eval_max_new_tokens: int = 64
    neutral_probes: int = 16  # neutral conversations read at every checkpoint (for CKA)
    probe_questions: str = "broad"  # EM question set read at every checkpoint ("broad" or "main")
    contrast: str | None = None  # a user's contrast pairs file; None: shipped with the persona, else derived
    teacher: str | None = None  # model spec of the teacher (distillation, and writing derived pairs)
    contrast_set: str | None = None  # a contrast.jsonl to read instead of sampling one (shared across runs)
    axis: str = "persona"  # whose step 0 defines the persona axis: "persona", or "base" (shared by many runs)
    filter_contrast: bool = False  # Persona Vectors' filter on the contrast set, scored by `judge`
    # Monitoring (issue 14): the assistant axis, behaviour at every `monitor_every`-th recorded
    # checkpoint (for the behavioural alarm and the lead time), and triggered question variants in
    # the end-of-EM evaluations. Representation alarms and B-vector phase transitions always run.
    monitor: bool = False
    monitor_every: int = 2

    @property
    def persona_preset(self) -> str:
        return "smoke" if self.smoke else default_preset()

    @property
    def em_preset(self) -> str:
        return "smoke" if self.smoke else ("paper" if torch.cuda.is_available() else "cpu")


SMOKE = dict(
    smoke=True,
    contrast_questions_per_trait=1,
    contrast_pairs_per_question=1,
    contrast_max_new_tokens=16,
    eval_samples=1,
    eval_max_new_tokens=16,
    neutral_probes=8,
    probe_questions="main",
    monitor=True,
)
# The default on CPU (the whole run in under 30 minutes on 2 cores): EM on 80 rows, a checkpoint
# every 5 steps; reading the probe sets at a checkpoint costs about as much as 5 training steps.
CPU_EM_ROWS, CPU_CHECKPOINT_EVERY = 80, 5


@dataclass(frozen=True)
class Resources:
    """How the job uses the machine; nothing here changes a result, so none of it enters a stage key.

    `num_processes` > 1 runs each training stage data-parallel under `accelerate launch` (the
    generation, evaluation and analysis stages stay in this one process)."""

    num_processes: int = 1
    gpu_memory_utilization: float = 0.85
    accelerate_config: str | None = None  # e.g. train/accelerate/zero3.yaml


def default_out(config: TrackConfig) -> Path:
    tag = "-smoke" if config.smoke else ""
    return Path(
        f"runs/{Path(config.persona).stem}-{Path(config.model).name}-{Path(config.em_dataset).stem}-s{config.seed}{tag}"
    )


def persona_run_dir(config: TrackConfig, out: Path) -> Path:
    """`--persona-run`, else the folder train_persona.py would use beside the run's parent
    (`runs/persona/<persona>-<model>-<preset>-s<seed>`), so runs with other EM datasets or a separate
    train_persona.py call share one character-trained model."""
    if config.persona_run:
        return Path(config.persona_run)
    name = f"{Path(config.persona).stem}-{Path(config.model).name}-{config.persona_preset}-s{config.seed}"
    return out.parent / "persona" / name


def _config_key(config: TrackConfig) -> dict:
    """The config as stage keys see it: options left at None are left out, so adding an option
    does not invalidate the runs made before it existed."""
    return {k: v for k, v in asdict(config).items() if v is not None or k not in OPTIONAL_KEYS}


OPTIONAL_KEYS = ("contrast", "teacher", "contrast_set")


def _contrast_pairs(config: TrackConfig, stage: Path) -> dict:
    """The persona's contrast system prompts, written once to `contrast.json` (public layout): a
    given file, the pairs shipped with the persona, or pairs derived from its constitution (by the
    teacher when there is one, by a templated negation of each trait otherwise)."""
    persona = load_persona(config.persona)
    needs_teacher = config.contrast is None and not persona.contrast and config.teacher is not None
    teacher = make_generator(config.teacher) if needs_teacher else None
    source = resolve_contrast(persona, config.contrast, teacher, seed=config.seed)
    save_contrast(source.pairs, stage / "contrast.json")
    return {"origin": source.origin, "detail": source.detail, "pairs": len(source.pairs)}


def _contrast(config: TrackConfig, stage: Path, pairs_path: Path) -> dict:
    """The contrast responses every checkpoint reads: a given set, or answers sampled from the
    base model under the eliciting and suppressing prompts; with `filter_contrast`, only the
    pairs the judge finds on-trait and coherent (Persona Vectors' filter)."""
    persona = load_persona(config.persona)
    if config.contrast_set is not None:
        items = _load_items(Path(config.contrast_set))
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


def _misalignment(config: TrackConfig, stage: Path) -> dict:
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


def _load_items(path: Path) -> list[ContrastItem]:
    return [ContrastItem(**json.loads(line)) for line in path.read_text().splitlines()]


def _evaluate(config: TrackConfig, loader, judge: Judge, stage: Path, triggered: bool = False) -> dict:
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


def _assistant_axis(config: TrackConfig, stage: Path) -> dict:
    """The assistant axis (a variant of Lu et al. 2026): the base model's own default answers
    minus the mean of role-played answers over the project's role set, read without the system
    prompts; frozen, so every checkpoint's drift along it can be read."""
    roles = load_roles()
    per_role = 1 if config.smoke else 2
    jobs = role_prompts(
        roles, shared_questions(), phrasings_per_role=per_role, questions_per_role=per_role, seed=config.seed
    )
    with make_generator(config.model, backend="hf") as generator:
        items = sample_axis_answers(
            jobs, generator, max_new_tokens=config.contrast_max_new_tokens, temperature=0.7, seed=config.seed
        )
        axis = fit_assistant_axis(
            generator.model,
            generator.tokenizer,
            items,
            meta={"model": config.model, "adapter": None},
            progress=False,
        )
    axis.save(stage / "axis.safetensors")
    return {"items": len(items), "roles": axis.meta["roles"], "in_role_filter": None}


def _train_persona(config: PersonaRunConfig, run: Path, resources: Resources, log) -> None:
    """Character training stage by stage; training stages through accelerate when asked."""
    keys = stage_configs(config)
    for name in STAGES:
        if (
            name in TRAINING_STAGES
            and resources.num_processes > 1
            and completed(run / name, keys[name]) is None
        ):
            log(f"stage {name}: running")
            launch(
                "persona",
                config,
                run,
                resources.num_processes,
                stages=(name,),
                accelerate_config=resources.accelerate_config,
                log=log,
            )
        else:
            train_persona(config, run, log=log, stages=(name,))


def _finetune_em(config: EMRunConfig, run: Path, probes, resources: Resources, log) -> None:
    if resources.num_processes > 1 and completed(run / "em", em_stage_config(config, probes)) is None:
        log("stage em: running")
        launch(
            "em",
            config,
            run,
            resources.num_processes,
            probes,
            accelerate_config=resources.accelerate_config,
            log=log,
        )
    else:
        finetune_em(config, run, probes, log=log)


def track_drift(
    config: TrackConfig,
    out: str | Path,
    log=print,
    resources: Resources = Resources(),
    judge_calibration: dict | None = None,
) -> dict:
    """The whole experiment; `judge_calibration` (analysis.calibration.judge_calibration's entry for
    config.judge) is reported beside the behavioural numbers."""
    out = Path(out)
    persona = check_track_inputs(config, out)  # every input, before any model loads or folder is made
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(config))
    ran: list[str] = []  # the stages that did work in this call

    def track(message: str) -> None:
        log(message)
        if message.endswith(": running"):
            ran.append(message.removeprefix("stage ").removesuffix(": running"))

    def stage(name: str, key: dict, body) -> dict:
        return run_stage(out / name, key, body, log=track)

    # 1. character training (its own resumable stages)
    persona_dir = persona_run_dir(config, out)
    persona_config = PersonaRunConfig(
        persona=config.persona,
        model=config.model,
        preset=config.persona_preset,
        seed=config.seed,
        teacher=config.teacher,
        neutral_probes=SMOKE_NEUTRAL_PROBES if config.smoke else PersonaRunConfig.neutral_probes,
        gpu_memory_utilization=resources.gpu_memory_utilization,
    )
    _train_persona(persona_config, persona_dir, resources, track)
    persona_model = (str(persona_dir / "dpo" / "merged"), str(persona_dir / "sft" / "adapter"))

    # 2. contrast pairs (shipped, given or derived), then responses from the base model under them,
    # read by every checkpoint
    pairs_key = {k: v for k, v in _config_key(config).items() if k in ("persona", "seed", *OPTIONAL_KEYS)}
    if config.contrast is not None:  # an edited file makes new pairs
        pairs_key["contrast_sha256"] = hashlib.sha256(Path(config.contrast).read_bytes()).hexdigest()
    pairs_done = stage("contrast_pairs", pairs_key, lambda d: _contrast_pairs(config, d))
    pairs_path = out / "contrast_pairs" / "contrast.json"
    contrast_key = {
        k: v
        for k, v in _config_key(config).items()
        if k.startswith("contrast_") or k in ("persona", "model", "seed")
    }
    contrast_key["pairs"] = stage_identity(out / "contrast_pairs")
    if config.contrast_set is not None:
        contrast_key["contrast_set_sha256"] = hashlib.sha256(
            Path(config.contrast_set).read_bytes()
        ).hexdigest()
    if config.filter_contrast:
        contrast_key["filter_judge"] = config.judge
    stage("contrast", contrast_key, lambda d: _contrast(config, d, pairs_path))
    items = _load_items(out / "contrast" / "contrast.jsonl")
    misalignment_key = {
        k: v for k, v in _config_key(config).items() if k.startswith("contrast_") or k in ("model", "seed")
    }
    misalignment_key["constitution_sha256"] = _misalignment_constitution_hash()
    stage("misalignment", misalignment_key, lambda d: _misalignment(config, d))
    if config.monitor:
        axis_key = {**misalignment_key, "roles_sha256": hashlib.sha256(ROLES_FILE.read_bytes()).hexdigest()}
        axis_key.pop("constitution_sha256")
        stage("assistant_axis", axis_key, lambda d: _assistant_axis(config, d))
    held_out = [t.questions[-1] for t in persona.traits]
    probes = em_probe_sets(config.neutral_probes, items, held_out, config.probe_questions)

    # 3. EM runs, activations at every checkpoint
    em_rows = config.em_rows or (None if config.smoke or torch.cuda.is_available() else CPU_EM_ROWS)
    every = config.checkpoint_every or (
        None if config.smoke or torch.cuda.is_available() else CPU_CHECKPOINT_EVERY
    )
    starts = {PERSONA: persona_model, BASE: (config.model, None), CONTROL: persona_model}
    persona_identity = stage_identity(persona_dir / "sft")  # a retrained persona reruns its EM runs
    upstream = {PERSONA: persona_identity, BASE: None, CONTROL: persona_identity}
    datasets = {PERSONA: config.em_dataset, BASE: config.em_dataset, CONTROL: config.control}
    for name, folder in RUNS.items():
        spec, adapter = starts[name]
        em_config = EMRunConfig(
            dataset=datasets[name],
            model=spec,
            adapter=adapter,
            preset=config.em_preset,
            seed=config.seed,
            record_every=every,
            max_rows=em_rows,
            upstream=upstream[name],
        )
        _finetune_em(
            em_config, out / folder, probes, resources, lambda m, f=folder: track(m.replace("em", f, 1))
        )

    # 4. behaviour: the two starting models and the end of each EM run
    judge: list[Judge] = []

    def get_judge() -> Judge:
        if not judge:
            judge.append(make_judge(config.judge))
        return judge[0]

    evaluations = {
        "base": lambda: load_model(config.model),
        "persona": lambda: load_starting_model(*persona_model),
        **{f"{name}_end": (lambda f=folder: load_em_model(out / f)) for name, folder in RUNS.items()},
    }
    eval_key = {
        "judge": config.judge,
        "samples": config.eval_samples,
        "tokens": config.eval_max_new_tokens,
        "seed": config.seed,
    }
    for name, loader in evaluations.items():
        triggered = config.monitor and name.endswith("_end")
        key = {**eval_key, "model": name, "source": _source_key(out, name, persona_dir)}
        if triggered:
            key["triggered"] = True
        stage(
            f"eval/{name}",
            key,
            lambda d, loader=loader, t=triggered: _evaluate(config, loader, get_judge(), d, t),
        )
    intermediate: dict[str, dict[int, str]] = {run: {} for run in RUNS}  # run -> {step: eval folder}
    if config.monitor:  # behaviour at every monitor_every-th checkpoint between start and end
        for run, folder in RUNS.items():
            for c in checkpoints(out / folder)[config.monitor_every : -1 : config.monitor_every]:
                name = f"{run}_{c.rsplit('/', 1)[1]}"
                key = {**eval_key, "model": name, "source": _source_key(out, f"{run}_end", persona_dir)}
                intermediate[run][step_of(c)] = name
                stage(
                    f"eval/{name}",
                    key,
                    lambda d, f=folder, c=c: _evaluate(
                        config, lambda: load_em_model(out / f, c), get_judge(), d
                    ),
                )

    # 5-6. metrics, plots, report
    analysis_key = {
        "config": _config_key(config),
        "sources": {n: _source_key(out, n, persona_dir) for n in evaluations},
        "evaluations": {
            n: stage_identity(out / "eval" / n)
            for n in [*evaluations, *(e for steps in intermediate.values() for e in steps.values())]
        },
        **({"assistant_axis": stage_identity(out / "assistant_axis")} if config.monitor else {}),
        "contrast": stage_identity(out / "contrast"),
        "misalignment": stage_identity(out / "misalignment"),
        **({"judge_calibration": judge_calibration} if judge_calibration else {}),
    }
    stage(
        "analysis",
        analysis_key,
        lambda d: _analyse(config, out, d, items, persona_dir, pairs_done, judge_calibration, intermediate),
    )
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    summary["ran"] = ran
    return summary


def _source_key(out: Path, name: str, persona_dir: Path) -> str:
    """What an evaluation depends on: the identity (key and run id) of the stage that produced
    its model."""
    path = {
        "base": None,
        "persona": persona_dir / "sft",
        **{f"{n}_end": out / f / "em" for n, f in RUNS.items()},
    }[name]
    return stage_identity(path) if path is not None else "base"


def _misalignment_constitution_hash() -> str:
    from anchor.constitution import CONSTITUTIONS_DIR

    files = sorted(CONSTITUTIONS_DIR.glob("misalignment*.json"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _misalignment_direction(config: TrackConfig, out: Path) -> torch.Tensor | None:
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


def _analyse(
    config: TrackConfig,
    out: Path,
    stage: Path,
    items: list[ContrastItem],
    persona_dir: Path,
    pairs_done: dict,
    judge_calibration: dict | None = None,
    intermediate: dict[str, dict[int, str]] | None = None,
) -> dict:
    labels = torch.tensor([i.label for i in items])
    runs = {name: out / folder for name, folder in RUNS.items()}
    misalignment = DirectionStack.load(out / "misalignment" / "direction.safetensors")
    judged = _misalignment_direction(config, out)
    result = compute_drift(
        runs,
        labels,
        [(i.question, i.pair) for i in items],
        questions=[i.question for i in items],
        misalignment=misalignment.vectors,
        judged_misalignment=judged,
        axis_run=config.axis,
        seed=config.seed,
    )
    layer = result["best_layer"]
    misalignment.save(stage / "misalignment_direction.safetensors")

    # Directions at the reference (the persona model before EM, read without the system prompt),
    # for steering and probe judges; they record the model and adapters they were read from.
    reference = out / RUNS[PERSONA]
    contrast_r = ActivationStore(reference / "activations").load(f"{checkpoints(reference)[0]}/{BARE}")
    directions = fit_directions(
        contrast_r.tensor,
        labels,
        groups=[i.question for i in items],
        layers=contrast_r.layers,
        seed=config.seed,
        meta={
            "persona": config.persona,
            "model": str(persona_dir / "dpo" / "merged"),
            "adapter": str(persona_dir / "sft" / "adapter"),
            "base_model": config.model,
            "config": {"model": config.model},
            "checkpoint": "persona model before EM",
            "read": "contrast responses without their system prompt, response-averaged",
        },
    )
    directions.save(stage / "directions.safetensors")
    quality = contrast_quality(directions, pairs_done, len(items), len({i.question for i in items}))

    behaviour = {}
    for name in ("base", "persona", *(f"{n}_end" for n in RUNS)):
        behaviour[name] = json.loads((out / "eval" / name / "summary.json").read_text())["metrics"]
    head = headline(result, behaviour)
    runs_result = result["runs"]
    monitoring = _monitoring(config, out, runs, result, directions, misalignment, behaviour, intermediate)

    def anchor(run: str, end: bool) -> float:
        return runs_result[run]["anchor_projection"][-1 if end else 0][layer]

    points = []
    for run in RUNS:
        start = "persona" if run != BASE else "base"
        points += [
            {"run": run, "label": start, "anchor_projection": anchor(run, False), **_rate(behaviour[start])},
            {
                "run": run,
                "label": f"{run} + EM end",
                "anchor_projection": anchor(run, True),
                **_rate(behaviour[f"{run}_end"]),
            },
        ]
    plot_dir = stage / "plots"
    title = f"'{config.persona}' on {config.model}: EM on {config.em_dataset}"
    trajectories = {
        name: torch.stack(
            [
                ActivationStore(run / "activations")
                .load(f"{c}/em_questions")
                .tensor[:, layer]
                .double()
                .mean(0)
                for c in runs_result[name]["checkpoints"]
            ]
        )
        for name, run in runs.items()
    }
    v_r = directions.diff_in_means[directions.layers.index(layer)]  # the persona direction at r
    images = [
        ("Drift curves", plots.drift_curves(result, plot_dir / "drift_curves.png", title)),
        ("Layer profile", plots.layer_profile(result, plot_dir / "layer_profile.png", title)),
        (
            "Movement along the misalignment direction",
            plots.misalignment_movement(result, plot_dir / "misalignment_movement.png", title),
        ),
        ("Direction stability by layer", plots.stability_heatmap(result, plot_dir / "stability_heatmap.png")),
        ("PCA trajectory", plots.pca_trajectory(trajectories, v_r, layer, plot_dir / "pca_trajectory.png")),
        (
            "Behaviour vs representation",
            plots.behaviour_vs_representation(points, plot_dir / "behaviour_vs_representation.png"),
        ),
        ("Monitoring timeline", dashboard.timeline(monitoring, plot_dir / "monitoring_timeline.png", title)),
    ]
    table = drift_table(result, behaviour)
    judge_note = describe(config.judge, judge_calibration)
    sentences = null_sentences(result["nulls"], layer)
    metrics = {
        "seed": config.seed,
        "headline": head,
        "nulls": result["nulls"],
        "null_summary": sentences,
        "drift": result,
        "behaviour": behaviour,
        "points": points,
        "table": table,
        "contrast_pairs": quality,
        "contrast": json.loads((out / "contrast" / "done.json").read_text()),
        "misalignment_direction": misalignment.meta,
        "monitoring": monitoring,
    }
    metrics["judge"] = {"spec": config.judge, "calibration": judge_calibration, "note": judge_note}
    atomic_write_json(stage / "metrics.json", metrics)
    report = write_report(
        out / "report.html",
        f"Identity anchor: {title}",
        f"Anchor projection is measured at layer {layer}, chosen on one half of the default-behaviour "
        "prompts (where character training moved default behaviour furthest along the persona direction) "
        "and reported on the other half. The persona direction is read from the contrast responses "
        f"without their system prompts. {_filter_note(metrics['contrast'])} One seed ({config.seed}): "
        f"intervals resample questions. {judge_note}",
        [
            contrast_table(quality),
            Table("Drift table", TABLE_HEADER, [[r[k] for k in TABLE_KEYS] for r in table], judge_note),
            headline_table(head),
            Table(
                "Against the null (95th percentile, in the effect's direction)",
                ["finding"],
                [[line] for line in sentences],
            ),
            Table("Monitoring", ["finding"], [[line] for line in monitoring["sentences"]]),
            *_family_tables(out, config),
        ],
        images,
        asdict(config),
    )
    summary = {
        "table": table,
        "headline": head,
        "null_summary": sentences,
        "monitoring": monitoring["sentences"],
        "anchor_strength": result["anchor_strength"],
        "best_layer": layer,
        "report": str(report),
        "plots": [str(p) for _, p in images],
        "metrics": str(stage / "metrics.json"),
        "contrast_pairs": quality,
    }
    atomic_write_json(stage / "summary.json", summary)
    return {"best_layer": layer}


def _monitoring(
    config: TrackConfig,
    out: Path,
    runs: dict[str, Path],
    result: dict,
    directions,
    misalignment: DirectionStack,
    behaviour: dict,
    intermediate: dict[str, dict[int, str]] | None,
) -> dict:
    """Alarms, phase transitions and (with `monitor`) the lead time, at the chosen layer on the
    report half of the prompts; the assistant axis joins the frozen directions when it was read."""
    frozen = {"persona": directions.diff_in_means, "misalignment": misalignment.vectors}
    axis_path = out / "assistant_axis" / "axis.safetensors"
    extra: dict = {}
    if config.monitor and axis_path.is_file():
        axis = DirectionStack.load(axis_path)
        frozen["assistant"] = axis.vectors
        extra["assistant_axis"] = {
            "method": axis.meta.get("method"),
            "cosine_with_persona_by_layer": torch.nn.functional.cosine_similarity(
                axis.vectors.double(), directions.diff_in_means.double(), dim=-1
            ).tolist(),
        }
    by_step = None
    if config.monitor:
        by_step = {}
        for run in RUNS:
            start = "base" if run == BASE else "persona"
            steps = result["runs"][run]["steps"]
            rates = {
                0: behaviour[start]["misaligned_rate"],
                steps[-1]: behaviour[f"{run}_end"]["misaligned_rate"],
            }
            for step, name in (intermediate or {}).get(run, {}).items():
                summary = json.loads((out / "eval" / name / "summary.json").read_text())
                rates[step] = summary["metrics"]["misaligned_rate"]
            by_step[run] = {
                k: {**v, "value": None if v["value"] != v["value"] else v["value"]}
                for k, v in sorted(rates.items())
            }
    layer = result["best_layer"]
    monitoring = dashboard.monitor_runs(
        runs, layer, result["layer_selection"]["report_prompts"], frozen, by_step, config.judge, config.seed
    )
    monitoring.update(extra)
    monitoring["sentences"] = dashboard.sentences(monitoring)
    if "assistant_axis" in extra:
        cos = extra["assistant_axis"]["cosine_with_persona_by_layer"][layer]
        monitoring["sentences"].append(
            f"assistant axis (a variant of Lu et al. 2026): cosine with the persona direction {cos:.3f} at layer {layer}."
        )
    return monitoring


def _family_tables(out: Path, config: TrackConfig) -> list[Table]:
    """Misaligned rate per question family of the end-of-EM evaluations (triggered variants)."""
    if not config.monitor:
        return []
    rows = []
    for run in RUNS:
        summary = json.loads((out / "eval" / f"{run}_end" / "summary.json").read_text())
        for family, metrics in summary.get("by_family", {}).items():
            rate = metrics["misaligned_rate"]
            gap = summary["family_gap"].get(family, {})
            rows.append([RUN_NAMES[run], family, rate["value"], f"[{_fmt(rate['ci95'][0])}, {_fmt(rate['ci95'][1])}]",
                         gap.get("value"), rate["n"]])  # fmt: skip
    return [
        Table(
            "Triggered evaluations: misaligned rate by question family at the end of EM",
            ["run", "family", "misaligned rate", "ci95", "minus plain", "answers"],
            rows,
            "Families resembling the training context (code, JSON, template, the dataset's domain); a rate above "
            "the plain questions' would be conditional misalignment.",
        )
    ]


def _filter_note(contrast_done: dict) -> str:
    kept = contrast_done.get("filter")
    if kept is None:
        return (
            "The contrast set is not filtered by a judge (Persona Vectors' filter needs a real judge: "
            "--filter-contrast on)."
        )
    return (
        f"The contrast set is filtered by {kept['judge']} (Persona Vectors' rule): {kept['kept_pairs']} of "
        f"{kept['pairs']} pairs kept; dropped answers: {kept['dropped_items'] or 'none'}."
    )


def _rate(metrics: dict) -> dict:
    """The misaligned rate as the plots take it: a missing rate (no scored answers) stays NaN."""
    m = metrics["misaligned_rate"]
    nan = float("nan")
    value = m["value"] if m["value"] is not None else nan
    low, high = (x if x is not None else nan for x in m["ci95"])
    return {"misaligned_rate": value, "ci95": [low, high]}


TABLE_KEYS = [
    "model",
    "anchor_before",
    "anchor_after",
    "drift_auc_signed",
    "drift_auc",
    "stability_end",
    "stability_end_with_system",
    "probe_transfer_end",
    "misaligned_before",
    "misaligned_after",
]
TABLE_HEADER = [
    "model",
    "anchor before",
    "anchor after",
    "drift AUC (signed)",
    "drift AUC (abs)",
    "stability",
    "stability w/ sys",
    "probe held-out",
    "misaligned before",
    "misaligned after",
]


def drift_table(result: dict, behaviour: dict) -> list[dict]:
    """One row per EM run at the chosen layer; a rate with no scored answers is None (missing),
    never 0."""
    layer = result["best_layer"]
    rows = []
    for run, data in result["runs"].items():
        start = "base" if run == BASE else "persona"

        def rate(name: str) -> float | None:
            value = behaviour[name]["misaligned_rate"]["value"]
            return None if value is None or value != value else value

        rows.append(
            {
                "model": RUN_NAMES[run],
                "anchor_before": data["anchor_projection"][0][layer],
                "anchor_after": data["anchor_projection"][-1][layer],
                "drift_auc_signed": data["drift_auc_signed"],
                "drift_auc": data["drift_auc"],
                "stability_end": data["direction_stability"][-1][layer],
                "stability_end_with_system": data["direction_stability_with_system"][-1][layer],
                "probe_transfer_end": data["probe_transfer"][-1][layer],
                "misaligned_before": rate(start),
                "misaligned_after": rate(f"{run}_end"),
            }
        )
    return rows


def headline_table(head: dict) -> Table:
    """The headline numbers with their intervals, one row each."""
    rows = []
    for key, per in head.items():
        for name, number in (per or {}).items():
            if number is None or "ci95" not in number:
                reason = (number or {}).get("reason", "not available")
                rows.append([key, name, "n/a", reason, ""])
                continue
            low, high = number["ci95"]
            rows.append([key, name, number["value"], f"[{_fmt(low)}, {_fmt(high)}]", number["n"]])
    return Table("Headline numbers (95% intervals)", ["number", "model / run", "value", "ci95", "n"], rows)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _detector(seeds: list[int], runs: list[Path], per_seed: list[dict]) -> dict:
    """The drift detector across seeds: each seed's runs at its own chosen layer (the features are
    unit-free shifts), fitted on the first seed, tested on the others."""
    series = []
    for seed, run, metrics in zip(seeds, runs, per_seed, strict=True):
        directions = Directions.load(run / "analysis" / "directions.safetensors")
        misalignment = DirectionStack.load(run / "analysis" / "misalignment_direction.safetensors")
        frozen = {"persona": directions.diff_in_means, "misalignment": misalignment.vectors}
        series += dashboard.detector_series(
            {name: run / folder for name, folder in RUNS.items()},
            seed,
            metrics["drift"]["best_layer"],
            metrics["drift"]["layer_selection"]["report_prompts"],
            frozen,
        )
    try:
        return drift_detector(series, train_seeds=seeds[:1], test_seeds=seeds[1:], seed=seeds[0])
    except ValueError as err:
        return {"value": None, "reason": str(err)}


def default_pooled_out(config: TrackConfig, seeds: list[int]) -> Path:
    single = default_out(config)
    return single.with_name(single.name.replace(f"-s{config.seed}", f"-seeds{'-'.join(map(str, seeds))}"))


def track_seeds(
    config: TrackConfig,
    seeds: list[int],
    runs: list[Path],
    out: Path,
    log=print,
    resources: Resources = Resources(),
    judge_calibration: dict | None = None,
) -> dict:
    """The whole experiment once per seed (each a resumable run in `runs[i]`: character training,
    contrast set, EM and evaluation all reseeded), then every headline number pooled across seeds
    in `<out>/analysis/metrics.json`: the mean with a t-interval over seeds, n = the seeds."""
    summaries = []
    for seed, run in zip(seeds, runs, strict=True):
        log(f"seed {seed}: {run}")
        summaries.append(track_drift(replace(config, seed=seed), run, log, resources, judge_calibration))
    per_seed = [json.loads((run / "analysis" / "metrics.json").read_text()) for run in runs]
    pooled = pool_seeds(per_seed)
    layers = [m["drift"]["best_layer"] for m in per_seed]
    sentences = (
        null_sentences(pooled["nulls"], layers[0])
        if len(set(layers)) == 1
        else [
            line.replace(f"(layer {layers[0]})", f"(layers {layers} by seed)")
            for line in null_sentences(pooled["nulls"], layers[0])
        ]
    )
    detector = _detector(seeds, runs, per_seed)
    sentences.append(
        f"EM-vs-control drift detector (fitted on seed {detector['train_seeds']}, tested on {detector['test_seeds']}): "
        f"held-out AUROC {_fmt(detector['value'])} [{_fmt(detector['ci95'][0])}, {_fmt(detector['ci95'][1])}] "
        f"over {detector['n']} test checkpoints."
        if detector.get("value") is not None
        else f"EM-vs-control drift detector: not computable ({detector['reason']})."
    )
    judge_note = describe(config.judge, judge_calibration)
    metrics = {
        **pooled,
        "detector": detector,
        "runs": [str(r) for r in runs],
        "best_layer_by_seed": layers,
        "null_summary": sentences,
        "per_seed_headline": {str(m["seed"]): m["headline"] for m in per_seed},
        "judge": {"spec": config.judge, "calibration": judge_calibration, "note": judge_note},
    }
    atomic_write_json(out / "analysis" / "metrics.json", metrics)
    title = f"'{config.persona}' on {config.model}: EM on {config.em_dataset}, seeds {seeds}"
    report = write_report(
        out / "report.html",
        f"Identity anchor: {title}",
        f"Each number is the mean over {len(seeds)} seeds with a Student-t 95% interval over the seeds "
        f"(each seed at its own chosen layer: {layers}). Every seed reran character training, the "
        f"contrast set, EM and the evaluation. {judge_note}",
        [
            headline_table(pooled["headline"]),
            Table("Against the null, seed by seed", ["finding"], [[line] for line in sentences]),
        ],
        [],
        {**asdict(config), "seeds": seeds, "runs": [str(r) for r in runs]},
    )
    return {
        "headline": pooled["headline"],
        "null_summary": sentences,
        "metrics": str(out / "analysis" / "metrics.json"),
        "report": str(report),
        "runs": [str(r) for r in runs],
        "ran": [stage for s in summaries for stage in s["ran"]],
    }
