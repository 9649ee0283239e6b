"""The rival hypothesis, tested: is the protection in the *diversity of situations* the character
training saw rather than in the traits? Keep the persona's traits fixed; build training question
sets of the same size at several measured diversity levels; character-train one model per level and
seed, run the same 2x2 of EM and control fine-tuning, and plot the interaction (along the judge-free
misalignment direction) and the misaligned rate against measured diversity, one line per seed.

    python scripts/diversity_sweep.py --persona sycophancy --seeds 0 1
    python scripts/diversity_sweep.py --persona sycophancy --smoke

What is held fixed across levels, so that only the diversity varies:
  * the held-out questions: each trait's held-out question (its last hand-written one,
    `Trait.questions[-1]`) is kept out of every training pool by text, and every level's
    constitution keeps it as that trait's last question, so every level is evaluated on it;
  * trait coverage: selection is stratified by trait, every trait giving the same number of
    questions (--questions // traits, the remainder one apiece to the first traits), chosen within
    the trait at the level (low: a tight cluster around a seeded centre; mid: random; high:
    farthest-point), so "low" is never one trait's cluster;
  * the persona axis: one contrast set is sampled once from the base model (the persona's contrast
    pairs over its training questions, never the held-out ones) into <out>/contrast.jsonl, and every
    level and seed reads it (TrackConfig.contrast_set) with the persona direction taken from the base
    model's reads (TrackConfig.axis="base"), identical across levels.
Diversity is measured as the mean pairwise cosine distance of the chosen questions' embeddings
(the base model's middle layer), overall and within trait (the mean over traits); the plots use the
within-trait number, the one the levels vary.

Every level runs the main job with the template's options (`SweepConfig.template`).

Output (<out>, default runs/sweep/<persona>-<model>):
    contrast/                           the shared contrast set (a stage keyed by what it was sampled with)
                                        (reused when they match)
    <level>-s<seed>/persona.json        the level's constitution (chosen questions + held-out)
    <level>-s<seed>/run/                a full track_drift.py run (resumable, like that script)
    sweep.json, *_vs_diversity.png

Character training may still grow or cut each level's questions to its preset's
questions_per_trait (train/persona.py's `questions` stage); the script warns when it will.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from analysis.experiments.inputs import check_sweep_inputs
from analysis.experiments.options import TrackConfig
from analysis.experiments.seeds import SeedPlan, run_seeds
from analysis.experiments.track import track_drift
from analysis.plots import sweep_plot
from analysis.stats import across_seeds
from anchor.constitution import (
    CONSTITUTIONS_DIR,
    ContrastPair,
    Persona,
    Trait,
    load_persona,
    persona_input,
    save_constitution,
)
from anchor.contrast_pairs import resolve_contrast
from anchor.generate import HFGenerator
from anchor.models import load_model
from anchor.questions import (
    LEVELS,
    held_out_questions,
    measure_diversity,
    model_embedder,
    select_subset,
    stratum_sizes,
    training_pool,
    within_group_distance,
)
from anchor.stages import Inputs, Stage, run_stage
from anchor.store import atomic_write_json, atomic_write_jsonl
from probes.contrast import sample_contrast
from train.distill import PRESETS as DPO_PRESETS

CONTRAST_TEMPERATURE = 0.7  # as track_drift's own contrast stage


def contrast_settings(template: TrackConfig) -> dict:
    """The contrast settings the levels' main jobs would use."""
    return {
        "questions_per_trait": template.contrast_questions_per_trait,
        "pairs_per_question": template.contrast_pairs_per_question,
        "max_new_tokens": template.contrast_max_new_tokens,
        "temperature": CONTRAST_TEMPERATURE,
    }


def contrast_questions(persona: Persona, per_trait: int) -> list[str]:
    """The first `per_trait` training-pool questions of each trait: never a held-out question."""
    pool, groups = training_pool(persona.traits)
    by_trait: dict[int, list[str]] = {}
    for question, g in zip(pool, groups):
        by_trait.setdefault(g, []).append(question)
    return [q for questions in by_trait.values() for q in questions[:per_trait]]


def shared_contrast(
    persona: Persona, persona_name: str, model_spec: str, settings: dict, seed: int, out: Path
) -> Path:
    """The contrast set every level reads, sampled once from the base model by the sweep's
    `contrast` stage (rows of ContrastItem.to_json()); reused while its declared inputs hold."""
    inputs = {
        "persona": persona_input(persona_name),
        "model": model_spec,
        "seed": seed,
        "settings": settings,
        "questions": contrast_questions(persona, settings["questions_per_trait"]),
        "pairs": [asdict(p) for p in resolve_contrast(persona, seed=seed).pairs],
    }
    done = run_stage(Stage(out, "contrast", inputs, sample_shared_contrast))
    print(
        f"contrast set: {done['items']} answers to {len(inputs['questions'])} questions -> {out / 'contrast'}"
    )
    return out / "contrast" / "contrast.jsonl"


def sample_shared_contrast(inputs: Inputs, stage: Path) -> dict:
    model, tokenizer = load_model(inputs.model)
    settings = inputs.settings
    items = sample_contrast(
        inputs.questions,
        [ContrastPair(**p) for p in inputs.pairs],
        HFGenerator(model, tokenizer),
        pairs_per_question=settings["pairs_per_question"],
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        seed=inputs.seed,
    )
    atomic_write_jsonl(stage / "contrast.jsonl", (i.to_json() for i in items))
    return {"items": len(items)}


def level_constitution(persona: Persona, persona_name: str, chosen: list[list[str]], path: Path) -> Path:
    """The persona with only the chosen training questions (`chosen[i]` for trait i), each trait
    keeping its held-out question last (so every level is evaluated on the same held-out set)."""
    held_out = held_out_questions(persona.traits)
    assert not set(held_out) & {q for c in chosen for q in c}, "a held-out question was chosen for training"
    traits = [Trait(t.trait, [*c, h]) for t, c, h in zip(persona.traits, chosen, held_out, strict=True)]
    save_constitution(traits, path)
    source = Path(persona_name)
    contrast = (
        source.with_name(f"{source.stem}.contrast.json")
        if source.suffix
        else CONSTITUTIONS_DIR / f"{persona_name}.contrast.json"
    )
    if contrast.is_file():
        shutil.copyfile(contrast, path.with_name(f"{path.stem}.contrast.json"))
    return path


def level_config(template: TrackConfig, constitution: Path, seed: int, contrast_set: Path) -> TrackConfig:
    """One level's main job: the template's options, the level's constitution and seed, and the
    same contrast set and the base model's axis for all levels."""
    return replace(
        template, persona=str(constitution), seed=seed, contrast_set=str(contrast_set), axis="base"
    )


def training_size_warning(per_trait: list[int], smoke: bool) -> str | None:
    """Character training (train/persona.py) takes the first `questions_per_trait` questions of
    each trait, its held-out one dropped, and first grows every trait that has fewer with generated
    questions: unless each trait gives that many less one (or exactly that many), the levels would
    not train on exactly the chosen sets. A warning saying so, else None."""
    preset = "smoke" if smoke else TrackConfig(persona="-").persona_preset
    taken = DPO_PRESETS[preset].questions_per_trait
    if all(taken - 1 <= n <= taken for n in per_trait):
        return None
    how = (
        "grown with generated questions"
        if min(per_trait) < taken - 1
        else f"cut to its first {taken} per trait"
    )
    return (
        f"character training (preset {preset!r}) takes the first {taken} questions of each trait (held-out "
        f"one dropped); the levels give {min(per_trait)}..{max(per_trait)} per trait, so each level's set is "
        f"{how} before training"
    )


@dataclass(frozen=True)
class SweepConfig:
    template: TrackConfig  # every level's main-job options (persona, model, judge, ...)
    levels: tuple[str, ...] = LEVELS
    seeds: tuple[int, ...] = (0,)
    questions: int = 20  # training questions per level, split evenly over the traits
    contrast_seed: int = 0


def check_sweep(config: SweepConfig, out: Path) -> Persona:
    """Every input, before any model loads or folder is made; returns the persona."""
    template = config.template
    persona = check_sweep_inputs(
        template.persona, template.model, template.em_dataset, template.judge, config.questions, out
    )
    traits = persona.traits
    _, groups = training_pool(traits)
    stratum_sizes([groups.count(t) for t in range(len(traits))], config.questions)
    if config.questions < 2 * len(traits):  # one question per trait is the same at every level
        raise ValueError(
            f"--questions {config.questions}: the persona has {len(traits)} traits; ask for at least "
            f"{2 * len(traits)}, two per trait, so the levels can differ in diversity within a trait"
        )
    return persona


def sweep(
    config: SweepConfig, out: Path, judge_calibration: dict | None = None, persona: Persona | None = None
) -> dict:
    """Every level x seed, resumable (each level's main job is); returns sweep.json with its plots.
    `persona`: the template's, as `check_sweep` loaded it (loaded here if not given)."""
    template = config.template
    persona = persona or load_persona(template.persona)
    pool, groups = training_pool(persona.traits)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(template.model)
    embeddings = model_embedder(model, tokenizer)(pool)
    del model, tokenizer
    contrast_set = shared_contrast(
        persona, template.persona, template.model, contrast_settings(template), config.contrast_seed, out
    )
    sizes = stratum_sizes([groups.count(t) for t in range(len(persona.traits))], config.questions)
    if warning := training_size_warning(sizes, template.smoke):
        print(f"warning: {warning}")

    def level_run(level: str, seeded: TrackConfig, run: Path) -> dict:
        """One level at one seed: that seed's question subset, its constitution, its main job."""
        seed = seeded.seed
        index = select_subset(embeddings, config.questions, level, seed=seed, groups=groups)
        chosen = [[pool[i] for i in index if groups[i] == t] for t in range(len(persona.traits))]
        diversity = {
            **asdict(measure_diversity(embeddings[index])),
            "within_trait_cosine_distance": within_group_distance(
                embeddings[index], [groups[i] for i in index]
            ),
            "questions_per_trait": [len(c) for c in chosen],
        }
        constitution = level_constitution(persona, template.persona, chosen, run.parent / "persona.json")
        print(
            f"level {level}, seed {seed}: diversity {diversity['mean_cosine_distance']:.3f} "
            f"(within trait {diversity['within_trait_cosine_distance']:.3f})"
        )
        summary = track_drift(
            level_config(seeded, constitution, seed, contrast_set), run, judge_calibration=judge_calibration
        )
        persona_row = next(r for r in summary["table"] if r["model"].startswith("persona + EM"))
        return {
            "level": level,
            "seed": seed,
            "diversity": diversity,
            "questions": chosen,
            "interaction": summary["interaction"]["misalignment"]["interaction"]["value"],
            "interaction_ci95": summary["interaction"]["misalignment"]["interaction"]["ci95"],
            "misaligned_after": persona_row["misaligned_after"],
            "run": str(run),
        }

    results = []
    for level in config.levels:  # each level over the seeds, by the one seed driver
        plan = SeedPlan(config.seeds, tuple(out / f"{level}-s{s}" / "run" for s in config.seeds), out)
        results += run_seeds(template, plan, lambda seeded, run, level=level: level_run(level, seeded, run))
    atomic_write_json(
        out / "sweep.json",
        {
            "persona": template.persona,
            "model": template.model,
            "contrast_set": str(contrast_set),
            "axis": "base",
            "held_out": held_out_questions(persona.traits),
            "training_warning": warning,
            "results": results,
            "by_level": {  # each level over the seeds: mean with a t-interval, n = seeds
                level: {
                    key: across_seeds(
                        [
                            r[key] if r[key] is not None else float("nan")
                            for r in results
                            if r["level"] == level
                        ]
                    )
                    for key in ("interaction", "misaligned_after")
                }
                for level in config.levels
            },
        },
    )
    by_seed = lambda key: {s: [r[key] for r in results if r["seed"] == s] for s in config.seeds}  # noqa: E731
    x = {
        s: [r["diversity"]["within_trait_cosine_distance"] for r in results if r["seed"] == s]
        for s in config.seeds
    }
    xlabel = "training-question diversity within trait (mean pairwise cosine distance)"
    plots = [
        sweep_plot(
            x,
            by_seed("interaction"),
            xlabel,
            "interaction along the misalignment direction (spreads)\n(< 0: EM moved the persona model less than the base)",
            f"The 2x2 interaction against question diversity ('{persona.name}')",
            out / "interaction_vs_diversity.png",
        ),
        sweep_plot(
            x,
            by_seed("misaligned_after"),
            xlabel,
            "misaligned rate after EM (persona model)",
            f"Misalignment after EM against question diversity ('{persona.name}')",
            out / "misaligned_vs_diversity.png",
        ),
    ]
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {"sweep": out / "sweep.json", "plots": plots}
