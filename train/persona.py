"""Character training end to end: base -> DPO distillation -> introspection SFT, each stage
resumable, activations recorded at every checkpoint.

Run directory:
    config.json
    dpo_data/dpo.jsonl             preference pairs (TRL conversational format)
    dpo/adapter, dpo/merged        the DPO LoRA adapter, and the base model with it merged
    sft_data/introspection.jsonl   self-reflection and self-interaction transcripts (`messages`)
    sft/adapter                    the SFT LoRA adapter, on top of dpo/merged
    adapters/<stage>/step-XXXXX    adapters at every recorded step
    activations/                   ActivationStore: <stage>/step-XXXXX/<probe set>
The persona model is `load_model("<run>/dpo/merged", adapter="<run>/sft/adapter")`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from anchor.constitution import load_constitution, load_persona, save_constitution
from anchor.generate import make_generator
from anchor.models import load_model
from anchor.probe_sets import neutral_conversations
from anchor.prompt_pool import load_prompts
from anchor.questions import ExpansionConfig, expand_persona, model_embedder
from anchor.store import ActivationStore, atomic_write_json, atomic_write_jsonl
from train import distill, introspect
from train.callbacks import ActivationRecorder, ProbeSet
from train.distributed import is_main, training_device, world_size
from train.inputs import check_persona_inputs
from train.stages import completed, run_stage

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


def stage_configs(config: PersonaRunConfig) -> dict[str, dict]:
    """Each stage's key material, in run order."""
    dpo_cfg, sft_cfg = stage_presets(config)
    # The engine's memory share changes no result, so it stays out of the keys.
    run = {k: v for k, v in asdict(config).items() if k != "gpu_memory_utilization"}
    dpo = {"run": run, "dpo": asdict(dpo_cfg)}
    sft = {**dpo, "sft": asdict(sft_cfg)}
    return {"questions": dpo, "dpo_data": dpo, "dpo": dpo, "sft_data": sft, "sft": sft}


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


def train_persona(
    config: PersonaRunConfig, run_dir: str | Path, log=print, stages: tuple[str, ...] = STAGES
) -> dict:
    """Run `stages` (all by default) of the character training in `run_dir`. Under
    `accelerate launch` with several processes only the training stages may run: generation runs
    once, in a single process, before (`stages=DATA_STAGES`-first, as track_drift.py does)."""
    run = Path(run_dir)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    check_persona_inputs(config, run)  # every input, before any model loads or folder is made
    persona = load_persona(config.persona)
    dpo_cfg, sft_cfg = stage_presets(config)
    keys = stage_configs(config)
    if world_size() > 1:
        pending = [
            name for name in DATA_STAGES if name in stages and completed(run / name, keys[name]) is None
        ]
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
    store = ActivationStore(run / "activations")
    probes = probe_sets(config.persona, config.neutral_probes)
    held_out = {t.questions[-1] for t in persona.traits}
    meta = {"model": config.model, "persona": config.persona}

    def questions(stage: Path) -> dict:
        """The constitution's questions grown to `questions_per_trait` per trait (the project's
        expansion, near-duplicates dropped), written by a local teacher (else the student) through
        HF: the expansion embeds its candidates with the writer's own residual stream."""
        short = min(len(t.all_questions) for t in persona.traits) < dpo_cfg.questions_per_trait
        traits = persona.traits
        if short and config.dpo_data is None:
            local_teacher = config.teacher and not config.teacher.startswith("openai:")
            writer = config.teacher if local_teacher else config.model
            with make_generator(writer, backend="hf") as generator:
                embed = model_embedder(generator.model, generator.tokenizer)
                expansion = ExpansionConfig(n=dpo_cfg.questions_per_trait, seed=config.seed)
                traits = expand_persona(persona.traits, generator, embed, expansion, writer)
        save_constitution(traits, stage / "constitution.jsonl")
        return {"questions": {t.trait[:60]: len(t.all_questions) for t in traits}, "expanded": short}

    def dpo_data(stage: Path) -> dict:
        counts: dict = {}
        if config.dpo_data is not None:
            rows = distill.load_preference_data(config.dpo_data)
        else:
            expanded = replace(persona, traits=load_constitution(run / "questions" / "constitution.jsonl"))
            pool = load_prompts(config.generic_prompts)
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

    def dpo(stage: Path) -> dict:
        rows = distill.load_preference_data(run / "dpo_data" / "dpo.jsonl")
        model, tokenizer = load_model(config.model, device=training_device())
        recorder = ActivationRecorder(
            tokenizer,
            store,
            probes,
            "dpo",
            dpo_cfg.record_every,
            run / "adapters",
            {**meta, "base": config.model},
        )
        trainer = distill.train_dpo(model, tokenizer, rows, dpo_cfg, stage, callbacks=[recorder])
        if is_main():
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(stage / "merged")
            tokenizer.save_pretrained(stage / "merged")
        history = [h for h in trainer.state.log_history if "rewards/margins" in h]
        return {
            "steps": trainer.state.global_step,
            "reward_margins": [round(h["rewards/margins"], 4) for h in history],
            "reward_accuracies": [round(h["rewards/accuracies"], 3) for h in history],
        }

    def sft_data(stage: Path) -> dict:
        merged = str(run / "dpo" / "merged")
        with make_generator(merged, gpu_memory_utilization=config.gpu_memory_utilization) as generator:
            reflections = introspect.self_reflection(persona, generator, sft_cfg)
            dialogues = introspect.self_interaction(persona, generator, sft_cfg)
        rows = [{"messages": m, "kind": "reflection"} for m in reflections]
        rows += [{"messages": m, "kind": "interaction"} for m in dialogues]
        atomic_write_jsonl(stage / "introspection.jsonl", rows)
        return {"reflections": len(reflections), "dialogues": len(dialogues)}

    def sft(stage: Path) -> dict:
        lines = (run / "sft_data" / "introspection.jsonl").read_text().splitlines()
        conversations = [json.loads(line)["messages"] for line in lines]
        model, tokenizer = load_model(str(run / "dpo" / "merged"), device=training_device())
        recorder = ActivationRecorder(
            tokenizer,
            store,
            probes,
            "sft",
            sft_cfg.record_every,
            run / "adapters",
            {**meta, "base": "dpo/merged"},
        )
        trainer = introspect.train_sft(model, tokenizer, conversations, sft_cfg, stage, callbacks=[recorder])
        losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
        return {"steps": trainer.state.global_step, "losses": losses}

    bodies = {"questions": questions, "dpo_data": dpo_data, "dpo": dpo, "sft_data": sft_data, "sft": sft}
    return {name: run_stage(run / name, keys[name], bodies[name], log) for name in STAGES if name in stages}
