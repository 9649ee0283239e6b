"""The main job's options, defined once: `TrackConfig` (what a run computes), `Resources` (how it uses
the machine) and their command-line flags. track_drift.py builds a run from the flags; defences.py,
steer.py, diversity_sweep.py and validate_direction.py read a finished run's `config.json` with
`--run RUN`, where a flag that contradicts the run is an error naming both values.

Every flag's argparse default is `SUPPRESS`, so a command knows which flags the user gave: defaults
come from the dataclasses, and only given flags are checked against a run's config.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from analysis.distilled_judge import default_judge
from anchor.inputs import InputError
from anchor.specs import JudgeSpec, ModelSpec
from probes.contrast import ANSWER_SOURCES
from train import tracking
from train.persona import default_preset


@dataclass(frozen=True)
class TrackConfig:
    persona: str
    model: str = "default"
    em_dataset: str = "insecure"
    control: str = "secure"
    seed: int = 0
    smoke: bool = False
    judge: str = field(default_factory=default_judge)  # distilled:default when its card allows
    persona_run: str | None = None  # reuse a finished train_persona.py run
    persona_adapter: str | None = None  # a published persona LoRA (folder or hub id) instead of training one
    # EM runs someone else trained, by cell of the 2x2 (persona, base, control, base_control): a folder
    # or hub id of PEFT checkpoints, read instead of training that cell
    em_checkpoints: dict[str, str] | None = None
    checkpoint_every: int | None = None  # default: the EM preset's
    em_rows: int | None = None  # default: the EM preset's
    # every hand-written question of every trait (5 in the shipped personas), one answer per
    # polarity: 100 answers, 26 of them held out, where 2 per trait held out 10 (a coin reaches 0.76)
    contrast_questions_per_trait: int = 5
    contrast_pairs_per_question: int = 1
    # where the contrast answers come from: "written" (the persona's shipped <name>.answers.jsonl),
    # "sampled" (from the model under the contrast pairs, Persona Vectors' way), or "auto": written
    # on the default model, which does not follow the eliciting prompts, sampled on any other
    contrast_answers: str = "auto"
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

    def __post_init__(self) -> None:  # specs are parsed once, here (each is still its text)
        object.__setattr__(self, "model", ModelSpec(self.model))
        object.__setattr__(self, "judge", JudgeSpec(self.judge))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", ModelSpec(self.teacher))

    @property
    def persona_preset(self) -> str:
        return "smoke" if self.smoke else default_preset()

    @property
    def em_preset(self) -> str:
        return "smoke" if self.smoke else ("paper" if torch.cuda.is_available() else "cpu")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, run_flag: bool = False) -> None:
        """The main job's flags. `run_flag`: also `--run RUN` (a finished run whose config the command
        reads; then the other flags may only repeat it)."""
        add_main_job_arguments(parser, run_flag)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrackConfig:
        """The config the given flags describe, the auto rules applied; with `--run`, that run's
        config, checked against every flag given."""
        if getattr(args, "run", None):
            return config_of_run(args.run, args)
        if "persona" not in vars(args):
            raise InputError("--persona is required (or --run RUN, a finished track_drift.py run)")
        given = _given(args)
        for name, parse in (("model", ModelSpec), ("judge", JudgeSpec), ("teacher", ModelSpec)):
            if name not in given:
                continue
            try:  # a bad spec names its flag: "judge 'x': use ..." -> "--judge 'x': use ..."
                parse(given[name])
            except ValueError as err:
                raise InputError(f"{_flag(name)} {given[name]!r}: {str(err).split(': ', 1)[-1]}") from None
        return _apply(cls(persona=args.persona), given)

    @classmethod
    def load(cls, run: str | Path) -> TrackConfig:
        """A run's `config.json` (written by the main job)."""
        path = Path(run) / "config.json"
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(
                f"--run {str(run)!r}: no config.json; give a track_drift.py run directory"
            ) from None
        except ValueError as err:
            raise InputError(f"--run {str(run)!r}: config.json is not JSON ({err})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise InputError(f"--run {str(run)!r}: config.json has unknown fields {unknown}")
        try:
            return cls(**saved)
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: not a track_drift.py config ({err})") from None


# The judge-free misalignment direction's scale, whatever the persona's contrast set takes: two
# questions per trait of the `misalignment` persona, one pair each (RECIPES.md).
MISALIGNMENT_QUESTIONS_PER_TRAIT = 2

SMOKE = dict(
    smoke=True,
    contrast_pairs_per_question=1,
    contrast_max_new_tokens=16,
    eval_samples=1,
    eval_max_new_tokens=16,
    neutral_probes=8,
    probe_questions="main",
)
# The default on CPU (the whole run in under 25 minutes on 2 cores): EM on 80 rows (20 steps), read
# at steps 0, 10 and 20. A read of the probe sets costs about as much as 5 training steps (20 s of an
# EM run's 170 s, profiled), and the reads are half of each run's time at a checkpoint every 5 steps;
# reads do not touch training, so the start and end reads (every headline number) are the same
# either way. `--checkpoint-every 5` gives the finer curves back.
CPU_EM_ROWS, CPU_CHECKPOINT_EVERY = 80, 10

# Flags whose value is a TrackConfig field of the same name (dashes for underscores).
_FIELD_FLAGS = (
    "persona",
    "model",
    "em_dataset",
    "control",
    "checkpoint_every",
    "em_rows",
    "contrast_questions_per_trait",
    "contrast_pairs_per_question",
    "contrast",
    "contrast_answers",
    "contrast_set",
    "teacher",
    "persona_run",
    "persona_adapter",
    "judge",
    "seed",
)


def add_main_job_arguments(parser: argparse.ArgumentParser, run_flag: bool = False) -> None:
    add = parser.add_argument
    suppress = argparse.SUPPRESS
    if run_flag:
        add("--run", help="a finished track_drift.py run: its config.json gives every option below")
    add("--persona", default=suppress, help="persona name (anchor/constitutions) or constitution path")
    add("--model", default=suppress, help="model spec (default: SmolLM2-135M-Instruct)")
    add(
        "--em-dataset", default=suppress, help="corrupted dataset name or chat JSONL path (default: insecure)"
    )
    add("--control", default=suppress, help="control dataset name or chat JSONL path (default: secure)")
    add(
        "--checkpoint-every",
        type=int,
        default=suppress,
        help=f"record activations every N EM steps (default: {CPU_CHECKPOINT_EVERY} on CPU, the EM preset's "
        "on GPU and with --smoke)",
    )
    add(
        "--em-rows",
        type=int,
        default=suppress,
        help=f"EM training rows (default: {CPU_EM_ROWS} on CPU, all on GPU, the smoke preset's with --smoke)",
    )
    add(
        "--contrast",
        default=suppress,
        help='your contrast pairs, JSON {"elicit": [...], "suppress": [...]} (default: the persona\'s own '
        "<name>.contrast.json, else derived from the constitution)",
    )
    add(
        "--contrast-answers",
        choices=ANSWER_SOURCES,
        default=suppress,
        help="the persona direction's contrast answers: written (the persona's shipped <name>.answers.jsonl), "
        "sampled (from the model under the contrast pairs, as Persona Vectors does), or auto (default): "
        "written on the default model, which does not follow the eliciting prompts, sampled otherwise",
    )
    add(
        "--contrast-questions-per-trait",
        type=int,
        default=suppress,
        help="contrast questions per trait, the first of each trait's hand-written ones (default: 5, all of "
        "the shipped personas')",
    )
    add(
        "--contrast-pairs-per-question",
        type=int,
        default=suppress,
        help="answers per question and polarity (default: 1): sampled under that many contrast pairs, or "
        "the first that many written ones (sycophancy ships 2: 2 gives 200 answers, 52 held out)",
    )
    add(
        "--contrast-set",
        default=suppress,
        help="your own contrast answers, JSONL with question, pair, label (1 elicited, 0 suppressed), system, "
        "response per line (what a run writes to contrast/contrast.jsonl), read instead of sampling or the "
        "written ones",
    )
    add(
        "--teacher",
        default=suppress,
        help="teacher model spec: distils the persona and writes derived contrast pairs (default: the model "
        "itself for distillation, a templated negation of each trait for the pairs)",
    )
    add("--persona-run", default=suppress, help="reuse this finished train_persona.py run directory")
    add(
        "--persona-adapter",
        default=suppress,
        help="start from a published persona LoRA instead of character training: a PEFT adapter folder on "
        "--model, or a hub id (as Open Character Training publishes one per persona)",
    )
    add(
        "--em-checkpoints",
        nargs="+",
        metavar="[CELL=]PATH_OR_HUB_ID",
        default=suppress,
        help="analyse EM runs someone else trained instead of training them: a folder (or hub id) of PEFT "
        "checkpoints (checkpoint-N/ or step-N/, as the Model Organisms release lays them out) on the cell's "
        "starting model; CELL is persona, base, control or base_control (default base: a published EM run "
        "of the base model)",
    )
    add(
        "--filter-contrast",
        choices=["auto", "on", "off"],
        default=suppress,
        help="Persona Vectors' filter on the contrast set, scored by --judge: keep pairs whose elicited "
        "answer shows the trait (>= 50) and suppressed one does not (< 50), both coherent (>= 50). auto "
        "(default): on with an openai: judge, off with a local one (a small model's scores would decide the set)",
    )
    add(
        "--judge",
        default=suppress,
        help="hf:<model>, openai:<model>, probe:<directions> or distilled:default|<folder> (default: "
        "distilled:default when its card's leave-one-model-out EM-flag AUROC is >= 0.85, else hf:default)",
    )
    add("--seed", type=int, default=suppress, help="one seed (default: 0)")
    add(
        "--smoke",
        action="store_true",
        default=suppress,
        help="tiny settings for an end-to-end check (monitoring on)",
    )
    add(
        "--monitor",
        action="store_true",
        default=suppress,
        help="full monitoring: the assistant axis, behaviour at every 2nd recorded checkpoint (behavioural "
        "alarm, lead time) and triggered question variants at the end of EM (alarms and phase transitions "
        "always run); on CPU it adds several minutes",
    )
    calibration = parser.add_argument_group("the judge's calibration")
    calibration.add_argument(
        "--judge-calibration",
        help="a calibration.json from scripts/calibrate_judge.py for the judge, reported beside the behaviour",
    )
    calibration.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate the judge on the project's labels first (about 2 min for hf:default on CPU); "
        "kept in <run>/judge_calibration.json. The default judge is always calibrated (cached per judge, "
        "labels, prompts and thresholds)",
    )
    calibration.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the default judge's automatic calibration (its rates are then printed as not calibrated)",
    )


def _given(args: argparse.Namespace) -> dict:
    """The config fields the given flags set, with the auto rules applied (`--smoke` brings its
    settings; `--filter-contrast auto` follows the judge)."""
    flags = vars(args)
    given = {name: flags[name] for name in _FIELD_FLAGS if name in flags}
    if flags.get("smoke"):  # a flag given beside --smoke wins over the preset's value
        given = {**SMOKE, **given}
    if flags.get("monitor"):
        given["monitor"] = True
    if "filter_contrast" in flags:
        given["filter_contrast"] = flags["filter_contrast"]
    if "em_checkpoints" in flags:
        given["em_checkpoints"] = em_checkpoints_of(flags["em_checkpoints"])
    return given


EM_CELLS = ("persona", "base", "control", "base_control")


def em_checkpoints_of(values: list[str]) -> dict[str, str]:
    """`[CELL=]PATH` values as {cell: path}; a bare path is the base cell's."""
    cells: dict[str, str] = {}
    for value in values:
        cell, sep, path = value.partition("=")
        cell, path = (cell, path) if sep and cell in EM_CELLS else ("base", value)
        if cell in cells:
            raise InputError(f"--em-checkpoints: two folders for the {cell} cell ({cells[cell]!r}, {path!r})")
        cells[cell] = path
    return cells


def _apply(config: TrackConfig, given: dict) -> TrackConfig:
    config = replace(config, **{k: v for k, v in given.items() if k != "filter_contrast"})
    choice = given.get("filter_contrast", "auto")
    return replace(config, filter_contrast=_filter(choice, config.judge))


def _filter(choice: str, judge: str) -> bool:
    return choice == "on" or (choice == "auto" and JudgeSpec(judge).kind == "openai")


def config_of_run(run: str | Path, args: argparse.Namespace) -> TrackConfig:
    """The run's config; every main-job flag given must say what the run says."""
    config = TrackConfig.load(run)
    given = _given(args)
    if "filter_contrast" in given:
        given["filter_contrast"] = _filter(given["filter_contrast"], given.get("judge", config.judge))
    saved = asdict(config)
    for name, value in given.items():
        if saved[name] != value:
            flag = "--smoke" if name in SMOKE else _flag(name)
            raise InputError(
                f"{flag} {value!r} contradicts --run {str(run)!r}, whose {name} is {saved[name]!r} "
                f"({Path(run) / 'config.json'}); drop {flag} or give another run"
            )
    return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Resources:
    """How the job uses the machine; nothing here changes a result, so none of it enters a stage key.

    `num_processes` > 1 runs each training stage data-parallel under `accelerate launch` (the
    generation, evaluation and analysis stages stay in this one process). `report_to` logs the
    training losses, and after the analysis each EM run's drift reads, to a tracker
    (`train.tracking`, `analysis.experiments.tracking`)."""

    num_processes: int = 1
    gpu_memory_utilization: float = 0.85
    accelerate_config: str | None = None  # e.g. train/accelerate/zero3.yaml
    report_to: str = "none"  # none, trackio, wandb or tensorboard

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("resources (no effect on results)")
        group.add_argument(
            "--num-processes",
            type=int,
            default=Resources.num_processes,
            help="train data-parallel on this many processes (GPUs) through accelerate; generation, "
            "evaluation and analysis stay in this process (default: 1)",
        )
        group.add_argument(
            "--accelerate-config",
            help="an accelerate config for the training stages, e.g. train/accelerate/zero3.yaml for "
            "models that do not fit one GPU (default: plain DDP)",
        )
        group.add_argument(
            "--gpu-memory-utilization",
            type=float,
            default=Resources.gpu_memory_utilization,
            help=f"share of the GPU's memory a vLLM engine may take (default: {Resources.gpu_memory_utilization})",
        )
        tracking.add_argument(group)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Resources:
        return cls(args.num_processes, args.gpu_memory_utilization, args.accelerate_config, args.report_to)


def judge_calibration_of(args: argparse.Namespace, config: TrackConfig, out: Path) -> dict | None:
    """The judge's calibration the flags ask for: a given calibration.json (it must hold the run's
    judge), or a fresh one on the project's labels kept in `<out>/judge_calibration.json`."""
    from analysis.calibration import (
        calibrate_spec,
        judge_calibration,
        load_calibration,
        project_calibration,
        with_card,
    )

    if args.judge_calibration:
        calibration = judge_calibration(load_calibration(args.judge_calibration), config.judge)
        if calibration is None:
            raise InputError(
                f"--judge-calibration {args.judge_calibration}: no calibration for judge {config.judge}"
            )
        return calibration
    if args.calibrate:
        return with_card(
            judge_calibration(calibrate_spec(config.judge, out / "judge_calibration.json"), config.judge),
            config.judge,
        )
    if config.judge == default_judge() and not getattr(args, "no_calibrate", False):  # always calibrated
        return with_card(judge_calibration(project_calibration(config.judge), config.judge), config.judge)
    return None


def default_out(config: TrackConfig) -> Path:
    tag = "-smoke" if config.smoke else ""
    return Path(
        f"runs/{Path(config.persona).stem}-{Path(config.model).name}-{Path(config.em_dataset).stem}-s{config.seed}{tag}"
    )


def add_output_arguments(parser: argparse.ArgumentParser, what: str = "run directory") -> None:
    """Where a main-job command writes, and several seeds."""
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="several seeds: the whole experiment once per seed, then every headline number pooled over "
        "seeds (mean, t-interval; n = seeds)",
    )
    parser.add_argument(
        "--out",
        help=f"{what} (default: runs/<persona>-<model>-<dataset>-s<seed>, or --run); with --seeds the pooled "
        "folder, each seed's run in <out>/s<seed>",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard finished stages whose inputs changed (default: keep them under <run>/superseded/)",
    )
