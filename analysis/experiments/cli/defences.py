"""Defences side by side: does a character-trained persona resist EM better than the other ways
to resist it? Every arm fine-tunes on the same corrupted rows, seed, steps and checkpoints (rows an
arm adds are extra: interleaving trains about 10% longer), is read
on the same probe sets and judged the same way; the main experiment (track_drift.py) runs first
or is reused, and its three runs are the arms none, persona and secure.

Arms (X alone starts from the base model, persona+X from the character-trained one):
  none                      base + EM
  persona                   persona + EM
  secure                    persona + the control data
  preventative_steering     add the misalignment direction while training (Persona Vectors)
  activation_capping        a floor on the assistant-axis projection at evaluation (The Assistant
                            Axis): none's (or persona's) run read and sampled with the caps on
  activation_capping_train  the same floors while training, evaluated with them off and on (a variant)
  kl                        KL to the starting model on generic prompts (in-training defences, 2025)
  interleave                a share of benign rows
  inoculation               a system prompt asking for the behaviour, removed at evaluation
  concept_ablation          project the misalignment direction out while training (CAFT)
  reflection                each corrupted row preceded by the model's own self-assessment (no loss)

Defaults (RECIPES.md gives each source): steering with 0.25 x the starting model's mean residual
norm at that layer along the unit misalignment direction, at 20/28 of the depth; capping floors at
the 25th percentile of the starting model's per-token projections over layers 46/64-54/64 of the
depth; blocking over the same band; KL weight 1.0; 10% interleaved rows; the dataset's shipped
inoculation prompt.

Arms by default: on GPU the paper set (every single defence, and persona+preventative_steering,
persona+kl, persona+inoculation); on CPU a smaller set that fits 60 minutes beside the main
experiment (none persona secure preventative_steering activation_capping kl inoculation);
--smoke runs every arm of the paper set at tiny scale.

    python scripts/defences.py --persona sycophancy
    python scripts/defences.py --run runs/sycophancy-default-insecure-s0   # on a finished main run
    python scripts/defences.py --persona sycophancy --smoke --out runs/defences-smoke
    python scripts/defences.py --persona sycophancy --arms none persona kl persona+kl --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from analysis.experiments.defence_arms import ARMS, CPU_ARMS, PAPER_ARMS, SMOKE_ARMS, DefenceSettings
from analysis.experiments.defences import DefencesConfig, defences_seeds, run_defences
from analysis.experiments.options import (
    Resources,
    TrackConfig,
    add_output_arguments,
    default_out,
    judge_calibration_of,
)
from analysis.experiments.seeds import plan_seeds
from anchor.inputs import InputError
from anchor.runlock import RunLocked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    TrackConfig.add_arguments(parser, run_flag=True)
    add_output_arguments(parser, "the main experiment's run directory")
    Resources.add_arguments(parser)
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, metavar="ARM",
        help=f"arms to run (default: {' '.join(CPU_ARMS)} on CPU; the paper set on GPU and with --smoke). "
        f"Any of: {' '.join(ARMS)}",
    )  # fmt: skip
    parser.add_argument(
        "--triggered", action=argparse.BooleanOptionalAction, default=None,
        help="also evaluate each arm on the triggered question variants (default: on with a GPU; off on "
        "CPU, --smoke included, where it quadruples the evaluation time)",
    )  # fmt: skip
    d = DefenceSettings()
    knobs = parser.add_argument_group("defence settings (sources in RECIPES.md)")
    knobs.add_argument("--steer-coefficient", type=float, default=d.steer_coefficient,
                       help="preventative steering: the added vector's norm as a share of the starting "
                       "model's mean residual norm at the steered layer, along the unit misalignment direction "
                       "(default 0.25, this project's choice; Persona Vectors: 5.0 x the unnormalised vector)")  # fmt: skip
    knobs.add_argument("--steer-depth", type=float, default=d.steer_depth,
                       help="steering layer as a share of depth (Persona Vectors: hidden_states[20] of 28)")  # fmt: skip
    knobs.add_argument("--cap-quantile", type=float, default=d.cap_quantile,
                       help="capping floor quantile of the step-0 per-token projections (The Assistant Axis: 0.25)")  # fmt: skip
    knobs.add_argument("--cap-band", type=float, nargs=2, default=d.cap_band, metavar=("FROM", "TO"),
                       help="capped layers as shares of depth (The Assistant Axis, Qwen3-32B: 46/64 to 54/64)")  # fmt: skip
    knobs.add_argument("--block-band", type=float, nargs=2, default=d.block_band, metavar=("FROM", "TO"),
                       help="layers where concept ablation projects the misalignment direction out while training")  # fmt: skip
    knobs.add_argument("--kl-coefficient", type=float, default=d.kl_coefficient,
                       help="weight of KL(start || trained) per token on the benign rows")  # fmt: skip
    knobs.add_argument("--interleave-share", type=float, default=d.interleave_share,
                       help="benign rows added, as a share of the corrupted rows (default 0.1)")  # fmt: skip
    knobs.add_argument(
        "--inoculation-prompt", help="the inoculation system prompt (default: the dataset's shipped one)"
    )
    knobs.add_argument("--benign-prompts", type=int, default=d.benign_prompts,
                       help="generic prompts the starting model answers once (KL, interleaving, capping floors)")  # fmt: skip
    knobs.add_argument("--reflections", type=int, default=d.reflections, help="self-assessments sampled once")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    try:
        track = TrackConfig.from_args(args)
        if args.run and (args.out or args.seeds):
            raise InputError(
                "--run RUN is one finished run: it is the output folder and its seed; drop --out/--seeds"
            )
    except InputError as err:
        parser.error(str(err))
    d = DefenceSettings()
    settings = replace(
        d, steer_coefficient=args.steer_coefficient, steer_depth=args.steer_depth, cap_quantile=args.cap_quantile,
        cap_band=tuple(args.cap_band), block_band=tuple(args.block_band), kl_coefficient=args.kl_coefficient,
        interleave_share=args.interleave_share, inoculation_prompt=args.inoculation_prompt,
        benign_prompts=args.benign_prompts, reflections=args.reflections,
    )  # fmt: skip
    if track.smoke:  # short samples, fewer of them, 10 of the 40 held-out answers
        settings = replace(
            settings, benign_max_new_tokens=24, reflection_max_new_tokens=24,
            benign_prompts=min(settings.benign_prompts, 8), reflections=min(settings.reflections, 2),
            capability_answers=10,
        )  # fmt: skip
    gpu = torch.cuda.is_available()
    arms = tuple(args.arms or (SMOKE_ARMS if track.smoke else PAPER_ARMS if gpu else CPU_ARMS))
    triggered = args.triggered if args.triggered is not None else gpu
    config = DefencesConfig(track, arms, settings, triggered)
    seeds = args.seeds or [track.seed]
    try:
        plan = plan_seeds(track, seeds, args.out, what="-defences") if len(seeds) > 1 else None
    except InputError as err:
        parser.error(str(err))
    outs = list(plan.runs) if plan else [Path(args.run or args.out or default_out(track))]
    if args.print_config:
        print(json.dumps({"config": asdict(config), "seeds": seeds, "out": [str(o) for o in outs]}, indent=1))
        return
    start = time.perf_counter()
    try:
        calibration = judge_calibration_of(args, track, outs[0])
        if plan is not None:
            summary = defences_seeds(
                config,
                plan,
                judge_calibration=calibration,
                overwrite=args.overwrite,
                resources=Resources.from_args(args),
            )
        else:
            summary = run_defences(
                config,
                outs[0],
                resources=Resources.from_args(args),
                judge_calibration=calibration,
                overwrite=args.overwrite,
            )
    except (InputError, ValueError) as err:
        parser.error(str(err))
    except RunLocked as err:
        raise SystemExit(f"defences.py: {err}") from None
    print(f"done in {time.perf_counter() - start:.0f} s; stages run: {', '.join(summary['ran']) or 'none'}")
    print_table(summary)
    print(
        f"\ndefences.json: {summary['defences']}\nplot:          {summary['plot']}\nreport:        {summary['report']}"
    )
    if summary.get("time"):  # this call's own time, where it went (also in the report)
        print(summary["time"])


def print_table(summary: dict) -> None:
    print()
    for line in summary["sentences"]:
        print(f"  {line}")
    print()
    widths = [max(len(h), 12) for h in summary["header"]]
    for row in [summary["header"], *summary["table"]]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
