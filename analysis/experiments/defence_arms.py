"""The arms of the defences comparison and the defaults each one takes, with their sources.

Every in-training arm fine-tunes on the same corrupted rows with the same seed, steps and
checkpoints as the undefended run (rows an arm adds are extra: interleaving trains about 10%
longer); it differs in where it starts (the base or the character-trained model) and in the
defence (`train.defences.Defence`) it trains with. `none`, `persona` and `secure` are the main
experiment's three runs and are reused from it. An evaluation-time arm trains nothing: it is the
undefended run from its start (`none` or `persona`) with the defence switched on wherever that
run is read or sampled, as The Assistant Axis applies activation capping at inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.drift_report import BASE, CONTROL, PERSONA, RUNS
from train.defences import STEER_COEFFICIENT, Defence, inoculation_prompt

SINGLE = (
    "preventative_steering",
    "activation_capping",  # at evaluation, as The Assistant Axis defines it: the primary capping arm
    "activation_capping_train",  # the caps on while training, off at the checkpoint reads: a variant
    "kl",
    "interleave",
    "inoculation",
    "concept_ablation",
    "reflection",
)
EVALUATION_TIME = ("activation_capping",)  # defences applied to a trained run, not while training
MAIN_RUNS = {"none": BASE, "persona": PERSONA, "secure": CONTROL}  # arm -> the main job's run name
REUSED = {arm: RUNS[run] for arm, run in MAIN_RUNS.items()}  # arm -> its folder in the main job
ARMS = (*REUSED, *SINGLE, *(f"persona+{x}" for x in SINGLE))
PAPER_ARMS = (*REUSED, *SINGLE, "persona+preventative_steering", "persona+kl", "persona+inoculation")
# What fits the 60-minute budget on 2 CPU cores beside the main experiment's 30 (each extra trained
# arm costs about 4.5 minutes: EM with its reads, one evaluation, the capability read-out; capping
# at evaluation about 2.5: the undefended run's checkpoints read again with the caps on).
CPU_ARMS = ("none", "persona", "secure", "preventative_steering", "activation_capping", "kl", "inoculation")
SMOKE_ARMS = (*REUSED, *SINGLE, "persona+preventative_steering", "persona+kl", "persona+inoculation")


@dataclass(frozen=True)
class DefenceSettings:
    """Each default's source is in RECIPES.md; every one is a CLI option."""

    # Preventative steering at Persona Vectors' hidden_states[20] of Qwen2.5-7B's 28 layers (block
    # 19), here the same relative depth; the coefficient is a share of the starting model's mean
    # residual norm there (their 5.0 x the unnormalised vector is not portable across models):
    # `train.defences.STEER_COEFFICIENT` says why 0.25.
    steer_coefficient: float = STEER_COEFFICIENT
    steer_depth: float = 20 / 28
    # The Assistant Axis: floor at the 25th percentile, on Qwen3-32B's layers 46-53 of 64 (both
    # capping arms; the floors come from the starting model's answers to the benign prompts).
    cap_quantile: float = 0.25
    cap_band: tuple[float, float] = (46 / 64, 54 / 64)
    # Concept ablation (CAFT): the misalignment direction projected out while training, over the same
    # middle-to-late band as capping (CAFT ablates at the layers its concepts were found at).
    block_band: tuple[float, float] = (46 / 64, 54 / 64)
    # KL(start || trained) on the benign rows' answers: the in-training defences paper's weight
    # could not be confirmed; 1.0 puts it on the scale of the SFT loss (nats per token).
    kl_coefficient: float = 1.0
    interleave_share: float = 0.1  # 10% benign rows (the default)
    benign_prompts: int = 32  # generic prompts the starting model answers once (KL, interleave, cap floors)
    benign_max_new_tokens: int = 96
    reflections: int = 8  # self-assessments sampled once per starting model
    reflection_max_new_tokens: int = 64
    inoculation_prompt: str | None = None  # None: the shipped prompt for the dataset
    capability_answers: int | None = None  # the first N held-out ordinary answers (None: all 40)


def steer_layer(n_layers: int, depth: float) -> int:
    """The block whose output is hidden_states[round(depth * n_layers)] (Persona Vectors index
    their layers that way: hidden_states[20] is block 19's output)."""
    return min(n_layers - 1, max(0, round(depth * n_layers) - 1))


def band(n_layers: int, fractions: tuple[float, float]) -> tuple[int, ...]:
    """The blocks from fractions[0] to fractions[1] of the depth (at least one)."""
    lo, hi = (round(f * n_layers) for f in fractions)
    lo = min(lo, n_layers - 1)
    return tuple(range(lo, max(hi, lo + 1)))


@dataclass(frozen=True)
class ArmFiles:
    """What the arms read, per starting model where it differs."""

    misalignment: Path  # DirectionStack of the judge-free misalignment direction
    assistant_axis: Path | None  # DirectionStack of the assistant axis (needed by capping arms)
    benign: dict[str, Path]  # start ("base"/"persona") -> chat JSONL of its own answers
    reflections: dict[str, Path]  # start -> JSONL of reflection exchanges


def start_of(arm: str) -> str:
    return "persona" if arm in ("persona", "secure") or arm.startswith("persona+") else "base"


def is_evaluation_time(arm: str) -> bool:
    """Whether the arm's defence acts on the undefended run's trained model (nothing trains)."""
    return defence_of(arm) in EVALUATION_TIME


def undefended_arm(arm: str) -> str:
    """The reused arm an evaluation-time arm applies its defence to: EM from the same start."""
    return "persona" if start_of(arm) == "persona" else "none"


def defence_of(arm: str) -> str | None:
    """The defence an arm adds (None for the three reused runs)."""
    if arm in REUSED:
        return None
    name = arm.removeprefix("persona+")
    if name not in SINGLE:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    return name


def build_defence(
    arm: str, settings: DefenceSettings, files: ArmFiles, n_layers: int, dataset: str
) -> Defence | None:
    """The `Defence` an arm trains with (None for the reused runs and the evaluation-time arms)."""
    name = defence_of(arm)
    start = start_of(arm)
    if name is None or name in EVALUATION_TIME:
        return None
    if name == "preventative_steering":
        return Defence(
            steer_direction=str(files.misalignment),
            steer_layer=steer_layer(n_layers, settings.steer_depth),
            steer_coefficient=settings.steer_coefficient,
        )
    if name == "activation_capping_train":
        return Defence(
            cap_axis=str(files.assistant_axis),
            cap_layers=band(n_layers, settings.cap_band),
            cap_quantile=settings.cap_quantile,
            benign_rows=str(files.benign[start]),
        )
    if name == "concept_ablation":
        return Defence(
            block_direction=str(files.misalignment), block_layers=band(n_layers, settings.block_band)
        )
    if name == "kl":
        return Defence(kl_coefficient=settings.kl_coefficient, benign_rows=str(files.benign[start]))
    if name == "interleave":
        return Defence(interleave_share=settings.interleave_share, benign_rows=str(files.benign[start]))
    if name == "inoculation":
        return Defence(inoculation_prompt=inoculation_prompt(dataset, settings.inoculation_prompt))
    return Defence(reflection_rows=str(files.reflections[start]))


def needs(arms: tuple[str, ...]) -> set[str]:
    """The shared inputs the chosen arms need: "benign/<start>", "reflections/<start>", "axis",
    "caps/<start>" (the capping floors an evaluation-time arm applies)."""
    wanted = set()
    for arm in arms:
        name, start = defence_of(arm), start_of(arm)
        if name in ("kl", "interleave", "activation_capping", "activation_capping_train"):
            wanted.add(f"benign/{start}")
        if name == "reflection":
            wanted.add(f"reflections/{start}")
        if name in ("activation_capping", "activation_capping_train"):
            wanted.add("axis")
        if name == "activation_capping":
            wanted.add(f"caps/{start}")
    return wanted
