"""Character training end to end: base -> DPO distillation -> introspection SFT, each stage
resumable, activations recorded at every checkpoint.

Run directory:
    config.json
    dpo_data/dpo.jsonl             preference pairs (TRL conversational format)
    dpo/adapter, dpo/merged        the DPO LoRA adapter, and the base model with it merged
    sft_data/introspection.jsonl   self-reflection and self-interaction transcripts (`messages`)
    sft/adapter                    the SFT LoRA adapter, on top of dpo/merged
    dpo/, sft/                     each also holds activations/ (ActivationStore:
                                   <stage>/step-XXXXX/<probe set>) and checkpoints/step-XXXXX
The persona model is `load_model("<run>/dpo/merged", adapter="<run>/sft/adapter")`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from anchor.constitution import Persona, load_constitution, load_persona, persona_input, save_constitution
from anchor.extract import prompt_set_hash
from anchor.generate import make_generator
from anchor.models import load_model
from anchor.probe_sets import neutral_conversations
from anchor.prompt_pool import GENERIC_PROMPTS_FILE, load_prompts
from anchor.questions import ExpansionConfig, expand_persona, model_embedder
from anchor.runs import stage_store
from anchor.specs import ModelSpec
from anchor.stages import Content, FileInput, Inputs, Stage, StageOutput, is_complete, run_stage
from anchor.store import atomic_write_json, atomic_write_jsonl
from train import distill, introspect
from train.callbacks import ActivationRecorder, ProbeSet
from train.distributed import is_main, training_device, world_size
from train.inputs import check_persona_inputs

DATA_STAGES = ("questions", "dpo_data", "sft_data")
TRAINING_STAGES = ("dpo", "sft")
STAGES = ("questions", "dpo_data", "dpo", "sft_data", "sft")
SELF_TEACHER_WARNING = (
    "WARNING: the paper preset with no --teacher: the student is its own teacher, prompted with the "
    "constitution. Open Character Training distils from a stronger teacher; this run is not that recipe."
)

HELD_OUT_PER_TRAIT = 1
SMOKE_NEUTRAL_PROBES = 8  # the smoke preset reads fewer neutral conversations per checkpoint  # the last hand-written question of each trait is never trained on


@dataclass(frozen=True)
class PersonaRunConfig:
    persona: str
    model: str = "default"
    teacher: str | None = None  # None: the student itself, prompted with the constitution
    preset: str = "cpu"
    seed: int = 0
    neutral_probes: int = 32
    dpo_data: str | None = None  # a user's own preference JSONL instead of generating one
    generic_prompts: str | None = None  # a JSONL pool (`prompt` field), e.g. LIMA; None: the shipped one
    gpu_memory_utilization: float = 0.85  # share of the GPU a vLLM engine may take


def default_preset() -> str:
    return "paper" if torch.cuda.is_available() else "cpu"


def probe_sets(persona_name: str, n_neutral: int) -> dict[str, ProbeSet]:
    """Fixed reads for every checkpoint: neutral conversations (response mean) and the held-out
    persona questions with no system prompt (the model's state as it starts to answer)."""
    persona = load_persona(persona_name)
    held_out = [t.questions[-1] for t in persona.traits]
    return {
        "neutral": ProbeSet(neutral_conversations(n_neutral), read="response_mean"),
        "persona_questions": ProbeSet(
            [[{"role": "user", "content": q}] for q in held_out], read="prompt_last"
        ),
    }


def stage_presets(config: PersonaRunConfig) -> tuple[distill.DistillConfig, introspect.IntrospectConfig]:
    """The DPO and introspection settings of the run's preset, with its seed."""
    return (
        replace(distill.PRESETS[config.preset], seed=config.seed),
        replace(introspect.PRESETS[config.preset], seed=config.seed),
    )


def persona_plan(config: PersonaRunConfig) -> dict:
    """The fully resolved run, as `--print-config` shows it: every knob of both stages and the
    data sizes they will produce; no model is loaded."""
    from train.lora import resolve_optimizer

    persona = load_persona(config.persona)
    dpo_cfg, sft_cfg = stage_presets(config)
    pool = load_prompts(config.generic_prompts)
    # each trait's last hand-written question is held out, when the preset would include it
    held_out = sum(dpo_cfg.questions_per_trait >= len(t.questions) for t in persona.traits)
    prompts = dpo_cfg.planned_prompts(len(persona.traits), len(pool)) - held_out
    pairs = prompts * dpo_cfg.samples_per_prompt
    introspection = sft_cfg.planned_rows()
    return {
        "preset": config.preset,
        "run": asdict(config),
        "teacher": config.teacher or "the student itself (prompted with the constitution)",
        "warning": SELF_TEACHER_WARNING if config.preset == "paper" and config.teacher is None else None,
        "dpo": asdict(dpo_cfg),
        "sft": asdict(sft_cfg),
        "optimizer_here": resolve_optimizer(dpo_cfg.optimizer),
        "data": {
            "traits": len(persona.traits),
            "questions_per_trait": dpo_cfg.questions_per_trait,
            "generic_pool": len(pool),
            "dpo_prompts": prompts,
            "samples_per_prompt": dpo_cfg.samples_per_prompt,
            "planned_dpo_pairs": pairs,
            "reflections": introspection["reflections"],
            "dialogues": introspection["dialogues"],
            "planned_sft_rows": introspection["sft_rows"],
        },
        "planned_optimizer_steps": {
            "dpo": dpo_cfg.planned_steps(pairs),
            "sft": sft_cfg.planned_steps(introspection["sft_rows"]),
        },
    }


def persona_stages(config: PersonaRunConfig, run_dir: str | Path) -> dict[str, Stage]:
    """The five stages of character training, in run order, each with the inputs it reads: the
    run's settings, the constitution and prompt pool by content, and the stages before it."""
    run = Path(run_dir)
    dpo_cfg, sft_cfg = stage_presets(config)
    # The engine's memory share changes no result: the bodies get it, the keys do not.
    settings = {k: v for k, v in asdict(config).items() if k != "gpu_memory_utilization"}
    common = {
        "run": settings,
        "persona": persona_input(config.persona),
        "gpu_memory_utilization": Content(config.gpu_memory_utilization, None),
    }
    pool = FileInput(Path(config.generic_prompts) if config.generic_prompts else GENERIC_PROMPTS_FILE)
    given = FileInput(Path(config.dpo_data)) if config.dpo_data is not None else None
    inputs = {
        "questions": {**common, "dpo": asdict(dpo_cfg)},
        "dpo_data": {
            **common,
            "dpo": asdict(dpo_cfg),
            "generic_prompts": pool,
            "dpo_data": given,
            "questions": StageOutput(run / "questions"),
        },  # fmt: skip
        "dpo": {
            **common,
            "dpo": asdict(dpo_cfg),
            "probes": _probes_input(config),
            "dpo_data": StageOutput(run / "dpo_data"),
        },  # fmt: skip
        "sft_data": {**common, "sft": asdict(sft_cfg), "dpo": StageOutput(run / "dpo")},
        "sft": {
            **common,
            "sft": asdict(sft_cfg),
            "probes": _probes_input(config),
            "dpo": StageOutput(run / "dpo"),
            "sft_data": StageOutput(run / "sft_data"),
        },  # fmt: skip
    }
    bodies = {"questions": write_questions, "dpo_data": write_dpo_data, "dpo": train_dpo_stage,
              "sft_data": write_sft_data, "sft": train_sft_stage}  # fmt: skip
    return {name: Stage(run, name, inputs[name], bodies[name]) for name in STAGES}


def _probes_input(config: PersonaRunConfig) -> Content:
    probes = probe_sets(config.persona, config.neutral_probes)
    return Content(probes, {name: [prompt_set_hash(p.conversations), p.read] for name, p in probes.items()})


def train_persona(
    config: PersonaRunConfig,
    run_dir: str | Path,
    log=print,
    stages: tuple[str, ...] = STAGES,
    overwrite: bool = False,
) -> dict:
    """Run `stages` (all by default) of the character training in `run_dir`. Under
    `accelerate launch` with several processes only the training stages may run: generation runs
    once, in a single process, before (`stages=DATA_STAGES`-first, as track_drift.py does)."""
    run = Path(run_dir)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    check_persona_inputs(config, run)  # every input, before any model loads or folder is made
    planned = persona_stages(config, run)
    if world_size() > 1:
        pending = [name for name in DATA_STAGES if name in stages and not is_complete(planned[name])]
        if pending:
            raise RuntimeError(
                f"{run}: stages {pending} generate data and run in one process; run them first without "
                f"accelerate (scripts/train_persona.py --stages {' '.join(pending)}), then launch training"
            )
    self_taught = config.preset == "paper" and config.teacher is None
    if self_taught:
        log(SELF_TEACHER_WARNING)
    if is_main():
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run / "config.json",
            {
                **asdict(config),
                "world_size": world_size(),
                "warning": SELF_TEACHER_WARNING if self_taught else None,
            },
        )
    return {name: run_stage(planned[name], log, overwrite) for name in STAGES if name in stages}


def _settings(inputs: Inputs) -> tuple[PersonaRunConfig, Persona]:
    config = PersonaRunConfig(**inputs.run, gpu_memory_utilization=inputs.gpu_memory_utilization)
    return config, load_persona(inputs.persona["constitution"])


def write_questions(inputs: Inputs, stage: Path) -> dict:
    """The constitution's questions grown to `questions_per_trait` per trait (the project's
    expansion, near-duplicates dropped), written by a local teacher (else the student) through
    HF: the expansion embeds its candidates with the writer's own residual stream."""
    config, persona = _settings(inputs)
    per_trait = inputs.dpo["questions_per_trait"]
    short = min(len(t.all_questions) for t in persona.traits) < per_trait
    traits = persona.traits
    if short and config.dpo_data is None:
        local_teacher = config.teacher is not None and not ModelSpec(config.teacher).served
        writer = config.teacher if local_teacher else config.model
        with make_generator(writer, backend="hf") as generator:
            embed = model_embedder(generator.model, generator.tokenizer)
            expansion = ExpansionConfig(n=per_trait, seed=config.seed)
            traits = expand_persona(persona.traits, generator, embed, expansion, writer)
    save_constitution(traits, stage / "constitution.jsonl")
    return {"questions": {t.trait[:60]: len(t.all_questions) for t in traits}, "expanded": short}


def write_dpo_data(inputs: Inputs, stage: Path) -> dict:
    config, persona = _settings(inputs)
    dpo_cfg = distill.DistillConfig(**inputs.dpo)
    counts: dict = {}
    if inputs.dpo_data is not None:
        rows = distill.load_preference_data(inputs.dpo_data)
    else:
        held_out = {t.questions[-1] for t in persona.traits}
        expanded = replace(persona, traits=load_constitution(inputs.questions / "constitution.jsonl"))
        pool = load_prompts(inputs.generic_prompts)
        prompts = [p for p in distill.distillation_prompts(expanded, dpo_cfg, pool) if p not in held_out]
        util = config.gpu_memory_utilization
        # One engine at a time: the teacher's answers, then the student's.
        with make_generator(config.teacher or config.model, gpu_memory_utilization=util) as teacher:
            chosen, counts["teacher"] = distill.teacher_answers(persona, prompts, teacher, dpo_cfg)
        with make_generator(config.model, gpu_memory_utilization=util) as student:
            rejected, counts["student"] = distill.student_answers(prompts, student, dpo_cfg)
        rows = distill.preference_rows(prompts, chosen, rejected)
        counts["planned_pairs"] = len(prompts) * dpo_cfg.samples_per_prompt
    atomic_write_jsonl(stage / "dpo.jsonl", rows)
    return {"rows": len(rows), "dropped": counts}


def train_dpo_stage(inputs: Inputs, stage: Path) -> dict:
    config, _ = _settings(inputs)
    dpo_cfg = distill.DistillConfig(**inputs.dpo)
    rows = distill.load_preference_data(inputs.dpo_data / "dpo.jsonl")
    model, tokenizer = load_model(config.model, device=training_device())
    meta = {"model": config.model, "persona": config.persona, "base": config.model}
    recorder = ActivationRecorder(
        tokenizer, stage_store(stage), inputs.probes, "dpo", dpo_cfg.record_every, stage, meta
    )
    trainer = distill.train_dpo(model, tokenizer, rows, dpo_cfg, stage, callbacks=[recorder])
    if is_main():
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(stage / "merged")
        tokenizer.save_pretrained(stage / "merged")
    history = [h for h in trainer.state.log_history if "rewards/margins" in h]
    return {
        "steps": trainer.state.global_step,
        "recorded": recorder.recorded,
        "reward_margins": [round(h["rewards/margins"], 4) for h in history],
        "reward_accuracies": [round(h["rewards/accuracies"], 3) for h in history],
    }


def write_sft_data(inputs: Inputs, stage: Path) -> dict:
    config, persona = _settings(inputs)
    sft_cfg = introspect.IntrospectConfig(**inputs.sft)
    merged = str(inputs.dpo / "merged")
    with make_generator(merged, gpu_memory_utilization=config.gpu_memory_utilization) as generator:
        reflections = introspect.self_reflection(persona, generator, sft_cfg)
        dialogues = introspect.self_interaction(persona, generator, sft_cfg)
    rows = [{"messages": m, "kind": "reflection"} for m in reflections]
    rows += [{"messages": m, "kind": "interaction"} for m in dialogues]
    atomic_write_jsonl(stage / "introspection.jsonl", rows)
    return {"reflections": len(reflections), "dialogues": len(dialogues)}


def train_sft_stage(inputs: Inputs, stage: Path) -> dict:
    config, _ = _settings(inputs)
    sft_cfg = introspect.IntrospectConfig(**inputs.sft)
    lines = (inputs.sft_data / "introspection.jsonl").read_text().splitlines()
    conversations = [json.loads(line)["messages"] for line in lines]
    model, tokenizer = load_model(str(inputs.dpo / "merged"), device=training_device())
    meta = {"model": config.model, "persona": config.persona, "base": "dpo/merged"}
    recorder = ActivationRecorder(
        tokenizer, stage_store(stage), inputs.probes, "sft", sft_cfg.record_every, stage, meta
    )
    trainer = introspect.train_sft(model, tokenizer, conversations, sft_cfg, stage, callbacks=[recorder])
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "recorded": recorder.recorded, "losses": losses}
