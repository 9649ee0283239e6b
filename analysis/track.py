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
                                     (or a given set), filtered by a judge when asked
    misalignment/                    the judge-free misalignment direction (direction.safetensors)
    assistant_axis/                  the assistant axis (axis.safetensors), with --monitor
    em_persona/ em_base/ em_control/ EM runs (train/em.py layout), same probe sets
    eval/<model>/                    EM evaluation: responses.jsonl, summary.json (and intermediate
                                     checkpoints, eval/<run>_step-XXXXX, with --monitor)
    analysis/                        metrics.json, directions.safetensors, plots/*.png
    report.html
Every stage has a `done.json` keyed by its config and the identities of the stages it depends on;
rerunning skips what is complete. The stage bodies live in `track_stages`, the analysis and report
in `track_report`, several seeds in `track_seeds`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analysis.drift_report import BASE, CONTROL, PERSONA, RUNS, step_of
from analysis.inputs import check_track_inputs
from analysis.judge import Judge, make_judge
from analysis.track_report import analyse
from analysis.track_stages import (
    evaluate_model,
    load_items,
    misalignment_constitution_hash,
    write_assistant_axis,
    write_contrast,
    write_contrast_pairs,
    write_misalignment_direction,
)
from anchor.constitution import Persona
from anchor.models import load_model
from anchor.roles import ROLES_FILE
from anchor.store import atomic_write_json
from train.defences import Defence
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
    persona_model = persona_start(persona_dir)

    # 2. contrast pairs (shipped, given or derived), then responses from the base model under them,
    # read by every checkpoint
    pairs_key = {k: v for k, v in _config_key(config).items() if k in ("persona", "seed", *OPTIONAL_KEYS)}
    if config.contrast is not None:  # an edited file makes new pairs
        pairs_key["contrast_sha256"] = hashlib.sha256(Path(config.contrast).read_bytes()).hexdigest()
    pairs_done = stage("contrast_pairs", pairs_key, lambda d: write_contrast_pairs(config, d))
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
    stage("contrast", contrast_key, lambda d: write_contrast(config, d, pairs_path))
    items = load_items(out / "contrast" / "contrast.jsonl")
    misalignment_key = {**_base_sample_key(config), "constitution_sha256": misalignment_constitution_hash()}
    stage("misalignment", misalignment_key, lambda d: write_misalignment_direction(config, d))
    if config.monitor:
        stage("assistant_axis", assistant_axis_key(config), lambda d: write_assistant_axis(config, d))
    probes = run_probe_sets(config, persona, items)

    # 3. EM runs, activations at every checkpoint
    starts = {PERSONA: persona_model, BASE: (config.model, None), CONTROL: persona_model}
    persona_identity = stage_identity(persona_dir / "sft")  # a retrained persona reruns its EM runs
    upstream = {PERSONA: persona_identity, BASE: None, CONTROL: persona_identity}
    datasets = {PERSONA: config.em_dataset, BASE: config.em_dataset, CONTROL: config.control}
    for name, folder in RUNS.items():
        em_config = em_run_config(config, datasets[name], starts[name], upstream[name])
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
            lambda d, loader=loader, t=triggered: evaluate_model(config, loader, get_judge(), d, t),
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
                    lambda d, f=folder, c=c: evaluate_model(
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
        lambda d: analyse(config, out, d, items, persona_dir, pairs_done, judge_calibration, intermediate),
    )
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    summary["ran"] = ran
    return summary


def persona_start(persona_dir: Path) -> tuple[str, str]:
    """(model, adapter) of the character-trained model: the DPO-merged weights with the SFT adapter."""
    return str(persona_dir / "dpo" / "merged"), str(persona_dir / "sft" / "adapter")


def run_probe_sets(config: TrackConfig, persona: Persona, items: list) -> dict:
    """The probe sets every EM run of the job reads at every checkpoint (defence arms included):
    the contrast items, a held-out question per trait, neutral conversations, EM questions."""
    held_out = [t.questions[-1] for t in persona.traits]
    return em_probe_sets(config.neutral_probes, items, held_out, config.probe_questions)


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


def _base_sample_key(config: TrackConfig) -> dict:
    """What a stage sampling the base model with the contrast settings depends on."""
    return {
        k: v for k, v in _config_key(config).items() if k.startswith("contrast_") or k in ("model", "seed")
    }


def assistant_axis_key(config: TrackConfig) -> dict:
    """The assistant-axis stage's key (shared by the monitored run and the defences harness)."""
    return {**_base_sample_key(config), "roles_sha256": hashlib.sha256(ROLES_FILE.read_bytes()).hexdigest()}


def _source_key(out: Path, name: str, persona_dir: Path) -> str:
    """What an evaluation depends on: the identity (key and run id) of the stage that produced
    its model."""
    path = {
        "base": None,
        "persona": persona_dir / "sft",
        **{f"{n}_end": out / f / "em" for n, f in RUNS.items()},
    }[name]
    return stage_identity(path) if path is not None else "base"
