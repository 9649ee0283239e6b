"""The main experiment, end to end and resumable: character-train a persona, fine-tune the persona
model and the base model each on the corrupted data and on its control data (the 2x2 whose
interaction is the question, `analysis.interaction`), record activations at every checkpoint,
compute drift metrics, evaluate behaviour, plot, report.

Run directory (`runs/<persona>-<model>-<dataset>-s<seed>/`):
    config.json
    ../persona/<persona>-<model>-<preset>-s<seed>/   character training (train/persona.py layout;
                                     shared with train_persona.py's default, or --persona-run)
    contrast_pairs/contrast.json     the contrast system prompts ({"elicit": [...], "suppress": [...]}):
                                     shipped with the persona, given (--contrast) or derived once
    contrast/contrast.jsonl          persona contrast responses: sampled once from the base model,
                                     the persona's written answers (the default model's default), or
                                     a given set; filtered by a judge when asked
    misalignment/                    the judge-free misalignment direction (direction.safetensors)
    assistant_axis/                  the assistant axis (axis.safetensors), with --monitor
    em_persona/ em_base/             EM runs on the corrupted data (train/em.py layout), same probe sets
    em_control/ em_base_control/     the same recipe on the control data, from each starting model
    eval/<model>/                    EM evaluation: responses.jsonl, summary.json (and intermediate
                                     checkpoints, eval/<run>_step-XXXXX, with --monitor)
    analysis/                        metrics.json, directions.safetensors, plots/*.png
    report.html
Every stage declares its inputs (values, files by content, the stages it reads) and its `done.json`
holds their key; rerunning skips what is complete, a finished stage whose inputs changed is set
aside in `superseded/` (never deleted without --overwrite), and one process holds the folder at a
time. All config reads happen in `plan_main_job`; the stages then see only what they declare. The
stage bodies live in `track_stages`, the analysis and report in `track_report`, several seeds in
`track_seeds`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from analysis.calibration import DEFAULT_LABELS, cannot_flag
from analysis.drift_report import BASE, BASE_CONTROL, CONTROL, PERSONA, RUNS
from analysis.experiments.inputs import check_track_inputs
from analysis.experiments.options import (
    CPU_CHECKPOINT_EVERY,
    CPU_EM_ROWS,
    MISALIGNMENT_QUESTIONS_PER_TRAIT,
    Resources,
    TrackConfig,
)
from analysis.experiments.track_report import START_OF, write_analysis
from analysis.experiments.track_stages import (
    base_source,
    em_source,
    evaluate_model,
    persona_source,
    published_persona_source,
    release_models,
    write_assistant_axis,
    write_contrast,
    write_contrast_pairs,
    write_likelihoods,
    write_misalignment_direction,
)
from analysis.experiments.tracking import log_drift
from analysis.report import add_table, timings_table
from anchor import timings
from anchor.constitution import Persona, persona_input
from anchor.inputs import InputError
from anchor.published import Published, resolve_published
from anchor.roles import ROLES_FILE
from anchor.runlock import run_lock
from anchor.runs import checkpoints, em_stage, step_of
from anchor.stages import Content, FileInput, Stage, StageOutput, is_complete, run_stage, stage_identity
from anchor.store import atomic_write_bytes, atomic_write_json
from probes.contrast import load_contrast_set, written_answers_for
from train import tracking
from train.defences import Defence
from train.em import (
    EMRunConfig,
    em_probe_sets,
    em_stage_of,
    finetune_em,
    import_em_stage,
    start_reads_stage,
)
from train.launch import launch
from train.persona import (
    SMOKE_NEUTRAL_PROBES,
    STAGES,
    TRAINING_STAGES,
    PersonaRunConfig,
    persona_stages,
    train_persona,
)


def persona_run_dir(config: TrackConfig, out: Path) -> Path:
    """`--persona-run`, else the folder train_persona.py would use beside the run's parent
    (`runs/persona/<persona>-<model>-<preset>-s<seed>`), so runs with other EM datasets or a separate
    train_persona.py call share one character-trained model."""
    if config.persona_run:
        return Path(config.persona_run)
    name = f"{Path(config.persona).stem}-{Path(config.model).name}-{config.persona_preset}-s{config.seed}"
    if config.teacher is not None:  # another teacher is another persona model, not a rerun of this one
        name += f"-teacher-{Path(config.teacher).name}"
    return out.parent / "persona" / name


def persona_config(config: TrackConfig, resources: Resources) -> PersonaRunConfig:
    return PersonaRunConfig(
        persona=config.persona,
        model=config.model,
        preset=config.persona_preset,
        seed=config.seed,
        teacher=config.teacher,
        neutral_probes=SMOKE_NEUTRAL_PROBES if config.smoke else PersonaRunConfig.neutral_probes,
        gpu_memory_utilization=resources.gpu_memory_utilization,
    )


@dataclass(frozen=True)
class MainJob:
    """The main job with every option resolved into stage inputs: running it reads no config."""

    out: Path
    persona_dir: Path
    persona: PersonaRunConfig
    held_out: tuple[str, ...]  # each trait's held-out question, read at every checkpoint
    pairs: dict
    contrast: dict
    misalignment: dict
    assistant_axis: dict | None
    em: EMRunConfig  # the shared recipe; each run sets data, start and upstream
    datasets: dict[str, str]
    probes: dict  # em_probe_sets' settings
    evaluation: dict  # judge, samples, tokens, seed
    triggered: str | None  # the EM dataset whose triggered variants the end-of-EM evaluations add
    monitor_every: int | None
    analysis: dict
    config_record: dict
    resources: Resources
    persona_adapter: Published | None = None  # a published persona model: no character training
    em_checkpoints: dict[str, Published] = field(default_factory=dict)  # cell -> published EM run

    def stage(self, name: str, inputs: dict, body) -> Stage:
        return Stage(self.out, name, inputs, body)

    def evaluation_stage(self, name: str, source: dict, triggered: str | None = None) -> Stage:
        """`eval/<name>`: one model's behaviour, keyed by the model (its spec or producing stage)."""
        return self.stage(
            f"eval/{name}", {**self.evaluation, "source": source, "triggered": triggered}, evaluate_model
        )


def plan_main_job(
    config: TrackConfig,
    out: Path,
    persona: Persona,
    resources: Resources = Resources(),
    judge_calibration: dict | None = None,
) -> MainJob:
    """Every option the job reads, resolved once into the stages' declared inputs."""
    persona_dir = persona_run_dir(config, out)
    needs_teacher = config.contrast is None and not persona.contrast and config.teacher is not None
    sampling = {
        "questions_per_trait": config.contrast_questions_per_trait,
        "pairs_per_question": config.contrast_pairs_per_question,
        "max_new_tokens": config.contrast_max_new_tokens,
    }
    filter_judge = config.judge if config.filter_contrast else None
    written = contrast_answers_file(config)
    return MainJob(
        out=out,
        persona_dir=persona_dir,
        persona=persona_config(config, resources),
        held_out=tuple(held_out_questions(persona)),
        pairs={
            "persona": persona_input(config.persona),
            "contrast": FileInput(Path(config.contrast)) if config.contrast is not None else None,
            "teacher": config.teacher if needs_teacher else None,
            "seed": config.seed,
        },
        contrast={
            "persona": persona_input(config.persona),
            "model": config.model,
            "seed": config.seed,
            "sampling": sampling,
            "pairs": StageOutput(out / "contrast_pairs"),
            "contrast_set": FileInput(Path(config.contrast_set)) if config.contrast_set is not None else None,
            "filter_judge": filter_judge,
            **({"written": FileInput(written)} if written is not None else {}),
        },
        misalignment={
            "persona": persona_input("misalignment"),
            "model": config.model,
            "seed": config.seed,
            # its own scale, whatever the persona's contrast set takes
            "sampling": {**sampling, "questions_per_trait": MISALIGNMENT_QUESTIONS_PER_TRAIT},
        },
        assistant_axis=assistant_axis_inputs(config) if config.monitor else None,
        em=em_run_config(config, config.em_dataset, (config.model, None), None),
        datasets={
            PERSONA: config.em_dataset,
            BASE: config.em_dataset,
            CONTROL: config.control,
            BASE_CONTROL: config.control,
        },
        probes={"n_neutral": config.neutral_probes, "questions": config.probe_questions},
        evaluation=evaluation_inputs(config, judge_calibration),
        triggered=config.em_dataset if config.monitor else None,
        monitor_every=config.monitor_every if config.monitor else None,
        analysis={"config": asdict(config), "judge_calibration": judge_calibration},
        config_record=asdict(config),
        resources=resources,
        persona_adapter=(
            resolve_published(config.persona_adapter, "--persona-adapter") if config.persona_adapter else None
        ),
        em_checkpoints={
            cell: resolve_published(spec, "--em-checkpoints")
            for cell, spec in (config.em_checkpoints or {}).items()
        },
    )


def evaluation_inputs(config: TrackConfig, judge_calibration: dict | None = None) -> dict:
    """What every behavioural evaluation of the job (defence arms included) shares, besides its model;
    with a calibration that shows the judge cannot flag, why (its rates are then not measurable)."""
    inputs = {
        "judge": config.judge,
        "samples": config.eval_samples,
        "max_new_tokens": config.eval_max_new_tokens,
        "seed": config.seed,
    }
    reason = cannot_flag(judge_calibration)
    return inputs if reason is None else {**inputs, "cannot_flag": reason}


def contrast_answers_file(config: TrackConfig) -> Path | None:
    """The persona's written contrast answers when the run reads them instead of sampling
    (`probes.contrast.written_answers_for`); a given set (`contrast_set`) wins over both."""
    if config.contrast_set is not None:
        return None
    try:
        return written_answers_for(
            config.persona, config.model, config.contrast_answers, own_pairs=config.contrast is not None
        )
    except ValueError as err:
        raise InputError(f"--contrast-answers {config.contrast_answers}: {err}") from None


def held_out_questions(persona: Persona) -> list[str]:
    """Each trait's last hand-written question: never trained on, read at every checkpoint."""
    return [t.questions[-1] for t in persona.traits]


def assistant_axis_inputs(config: TrackConfig) -> dict:
    """The assistant axis's inputs (shared by the monitored run and the defences harness): the base
    model's role-played answers over the shipped role set, kept by the run's judge only when the
    run filters by judge (`filter_contrast`)."""
    return {
        "model": config.model,
        "seed": config.seed,
        "per_role": 1 if config.smoke else 2,
        "max_new_tokens": config.contrast_max_new_tokens,
        "roles": FileInput(ROLES_FILE),
        "in_role_judge": config.judge if config.filter_contrast else None,
    }


def _train_persona(config: PersonaRunConfig, run: Path, resources: Resources, log, overwrite: bool) -> None:
    """Character training stage by stage; training stages through accelerate when asked."""
    planned = persona_stages(config, run)
    for name in STAGES:
        if name in TRAINING_STAGES and resources.num_processes > 1 and not is_complete(planned[name]):
            log(f"stage {name}: running")
            with timings.stage(name):  # the ranks' own work is counted in their processes, not here
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
            train_persona(config, run, log=log, stages=(name,), overwrite=overwrite)


def finetune_from_start(
    config: EMRunConfig,
    run: Path,
    probes,
    resources: Resources,
    log,
    root: Path,
    start: Path,
    overwrite: bool = False,
) -> None:
    """An EM run whose step 0 is the read of its starting model in `start` (a start-reads stage,
    read first when the run still has to train). On several processes the ranks read step 0
    themselves: a sharded model may not fit this process, and GPU memory it held would not be
    back for rank 0."""
    if resources.num_processes == 1:
        if not is_complete(em_stage_of(config, run, probes, root, start)):
            run_stage(start_reads_stage(config, start, probes, root), log, overwrite)
        finetune_em(config, run, probes, log=log, root=root, overwrite=overwrite, start_reads=start)
    elif is_complete(em_stage_of(config, run, probes, root)):
        finetune_em(config, run, probes, log=log, root=root, overwrite=overwrite)  # a skip
    else:
        name = str(em_stage(run).relative_to(root))
        log(f"stage {name}: running")
        with timings.stage(name):  # the ranks' own work is counted in their processes, not here
            launch(
                "em",
                config,
                run,
                resources.num_processes,
                probes,
                accelerate_config=resources.accelerate_config,
                root=root,
                log=log,
            )


def track_drift(
    config: TrackConfig,
    out: str | Path,
    log=print,
    resources: Resources = Resources(),
    judge_calibration: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """The whole experiment; `judge_calibration` (analysis.calibration.judge_calibration's entry for
    config.judge) is reported beside the behavioural numbers. `overwrite` discards finished stages
    whose inputs changed instead of setting them aside. `resources.report_to` logs the training
    losses and, after the analysis, each EM run's drift reads to that tracker
    (`analysis.experiments.tracking`)."""
    out = Path(out)
    tracking.check_tracker(resources.report_to)  # a missing package fails before any work
    persona = check_track_inputs(config, out)  # every input, before any model loads or folder is made
    job = plan_main_job(config, out, persona, resources, judge_calibration)
    with run_lock(out), timings.recording() as recorder, tracking.reporting(resources.report_to, out):
        summary = run_main_job(job, log, overwrite)
        log_drift(out, resources.report_to, log)  # once per analysis and tracker; none: nothing
        if "analysis" in summary["ran"]:  # this call produced the analysis: it carries this call's timings
            summary["time"] = add_timings(
                out / "analysis" / "metrics.json",
                [out / "analysis" / "report.html", out / "report.html"],
                recorder.rows(),
                log,
            )
        return summary


def add_timings(metrics_path: Path, reports: list[Path], rows: list[dict], log=print) -> str:
    """A call's timings into the metrics file its analysis wrote and into the reports; logs and
    returns the line naming the largest rows (the scripts print it again as their last line)."""
    metrics = json.loads(metrics_path.read_text())
    metrics["timings"] = rows
    atomic_write_json(metrics_path, metrics)
    table = timings_table(rows)
    for report in reports:
        add_table(report, table)
    line = f"time: {sum(r['seconds'] for r in rows):.0f} s; largest: {timings.largest(rows)}"
    log(line)
    return line


def run_main_job(job: MainJob, log=print, overwrite: bool = False) -> dict:
    out = job.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", job.config_record)
    ran: list[str] = []  # the stages that did work in this call

    def track(message: str) -> None:
        log(message)
        if message.endswith(": running"):
            ran.append(message.removeprefix("stage ").removesuffix(": running"))

    def run(stage: Stage) -> dict:
        return run_stage(stage, track, overwrite)

    # 1. character training (its own run folder, locked while it is written), or a published persona
    if job.persona_adapter is None:
        with run_lock(job.persona_dir, "persona folder"):
            _train_persona(job.persona, job.persona_dir, job.resources, track, overwrite)
    persona = persona_model(job.persona.model, job.persona_dir, job.persona_adapter)

    # 2. contrast pairs (shipped, given or derived), then the answers (sampled under them, written or given)
    # read by every checkpoint; the judge-free misalignment direction; the assistant axis
    run(job.stage("contrast_pairs", job.pairs, write_contrast_pairs))
    run(job.stage("contrast", job.contrast, write_contrast))
    items = load_contrast_set(out / "contrast" / "contrast.jsonl")
    run(job.stage("misalignment", job.misalignment, write_misalignment_direction))
    if job.assistant_axis is not None:
        run(job.stage("assistant_axis", job.assistant_axis, write_assistant_axis))
    probes = em_probe_sets(job.probes["n_neutral"], items, list(job.held_out), job.probes["questions"])

    # 3. the 2x2's four runs, activations at every checkpoint, all on one shared recipe
    # (a published EM run is read at its own checkpoints instead of being trained)
    base_model = (job.persona.model, None)
    starts = {PERSONA: persona.start, BASE: base_model, CONTROL: persona.start, BASE_CONTROL: base_model}
    # a retrained (or republished) persona reruns its EM runs
    upstream = {PERSONA: persona.identity, BASE: None, CONTROL: persona.identity, BASE_CONTROL: None}
    # Each starting model is read once (`start/<start>`): every run that trains from it copies that
    # read as its step 0 (the EM run and its control share a start).
    for name, folder in RUNS.items():
        model, adapter = starts[name]
        em_config = replace(
            job.em, dataset=job.datasets[name], model=model, adapter=adapter, upstream=upstream[name]
        )
        if name in job.em_checkpoints:
            run(import_em_stage(em_config, out / folder, job.em_checkpoints[name], probes, root=out))
            continue
        start = out / "start" / START_OF[name]
        finetune_from_start(em_config, out / folder, probes, job.resources, track, out, start, overwrite)

    # 4. behaviour: the two starting models and the end of each EM run
    sources = {
        "base": base_source(job.persona.model),
        "persona": persona.source,
        **{f"{name}_end": em_source(out / folder) for name, folder in RUNS.items()},
    }
    evaluations: dict[str, StageOutput] = {}
    likelihoods: dict[str, StageOutput] = {}
    for name, source in sources.items():
        run(job.evaluation_stage(name, source, job.triggered if name.endswith("_end") else None))
        # the judge-free read, on the model the evaluation just loaded (one load for both)
        run(
            job.stage(
                f"likelihood/{name}",
                {"source": source, "labels": FileInput(DEFAULT_LABELS)},
                write_likelihoods,
            )
        )
        release_models()
        evaluations[name] = StageOutput(out / "eval" / name)
        likelihoods[name] = StageOutput(out / "likelihood" / name)
    intermediate: dict[str, dict[int, str]] = {r: {} for r in RUNS}  # run -> {step: eval name}
    if job.monitor_every is not None:  # behaviour at every monitor_every-th checkpoint
        for r, folder in RUNS.items():
            for c in checkpoints(out / folder)[job.monitor_every : -1 : job.monitor_every]:
                name = f"{r}_{c.rsplit('/', 1)[1]}"
                run(job.evaluation_stage(name, em_source(out / folder, c)))
                release_models()
                intermediate[r][step_of(c)] = name
                evaluations[name] = StageOutput(out / "eval" / name)

    # 5-6. metrics, plots, report: the analysis reads exactly these stages
    analysis_inputs = {
        **job.analysis,
        "root": Content(str(out), None),  # where the stages below live; their identities are the key
        "persona": persona.analysis,
        "runs": {r: StageOutput(em_stage(out / f)) for r, f in RUNS.items()},
        "evaluations": evaluations,
        "likelihoods": likelihoods,
        "intermediate": {r: {str(k): v for k, v in steps.items()} for r, steps in intermediate.items()},
        "contrast_pairs": StageOutput(out / "contrast_pairs"),
        "contrast": StageOutput(out / "contrast"),
        "misalignment": StageOutput(out / "misalignment"),
        "assistant_axis": StageOutput(out / "assistant_axis") if job.assistant_axis is not None else None,
    }
    run(job.stage("analysis", analysis_inputs, write_analysis))
    publish(out / "analysis" / "report.html", out / "report.html")
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    summary["ran"] = ran
    return summary


def publish(source: Path, target: Path) -> None:
    """The current analysis's report at the run's top level (a copy: the stage keeps its own)."""
    atomic_write_bytes(target, source.read_bytes())


def persona_start(persona_dir: Path) -> tuple[str, str]:
    """(model, adapter) of the character-trained model: the DPO-merged weights with the SFT adapter."""
    return str(persona_dir / "dpo" / "merged"), str(persona_dir / "sft" / "adapter")


@dataclass(frozen=True)
class PersonaModel:
    """The persona model the EM runs start from and the evaluations read, trained here or published."""

    start: tuple[str, str]  # (model, adapter) as load_starting_model reads them
    source: dict  # as an evaluation stage's input
    identity: str  # its EM runs' upstream: a retrained persona or another revision reruns them
    analysis: StageOutput | dict  # as the analysis stage declares it


def persona_model(model: str, persona_dir: Path, published: Published | None) -> PersonaModel:
    """The character-trained model of `persona_dir` (its training finished), or `published`, a
    persona adapter on `model` (`--persona-adapter`)."""
    if published is None:
        return PersonaModel(
            persona_start(persona_dir),
            persona_source(persona_dir),
            stage_identity(persona_dir / "sft"),
            StageOutput(persona_dir / "sft"),
        )
    source = published_persona_source(model, published)
    return PersonaModel((model, str(published.path)), source, published.identity, source)


def run_probe_sets(config: TrackConfig, persona: Persona, items: list) -> dict:
    """The probe sets every EM run of the job reads at every checkpoint (defence arms included):
    the contrast items, a held-out question per trait, neutral conversations, EM questions."""
    return em_probe_sets(config.neutral_probes, items, held_out_questions(persona), config.probe_questions)


def em_run_config(
    config: TrackConfig,
    dataset: str,
    start: tuple[str, str | None],
    upstream: str | None,
    defence: Defence | None = None,
) -> EMRunConfig:
    """One EM run of the job: every run (and every defence arm) shares the preset, seed, rows and
    checkpoint interval, so they differ only in data, starting model and defence."""
    rows, every = em_schedule(config)
    model, adapter = start
    return EMRunConfig(
        dataset=dataset,
        model=model,
        adapter=adapter,
        preset=config.em_preset,
        seed=config.seed,
        record_every=every,
        max_rows=rows,
        upstream=upstream,
        defence=defence,
    )


def em_schedule(config: TrackConfig) -> tuple[int | None, int | None]:
    """(training rows, checkpoint interval) of every EM run; None: the EM preset's."""
    cpu_default = not (config.smoke or torch.cuda.is_available())
    rows = config.em_rows or (CPU_EM_ROWS if cpu_default else None)
    every = config.checkpoint_every or (CPU_CHECKPOINT_EVERY if cpu_default else None)
    return rows, every
