"""The rival hypothesis, tested: is the protection in the *diversity of situations* the character
training saw rather than in the traits? (`analysis.experiments.diversity_sweep` says how.)

    python scripts/diversity_sweep.py --persona sycophancy --seeds 0 1
    python scripts/diversity_sweep.py --persona sycophancy --smoke
    python scripts/diversity_sweep.py --run runs/sycophancy-default-insecure-s0   # that run's options

Every level runs the main job with the same options (track_drift.py's, or --run's config.json), its
own constitution and seed, one shared contrast set and the base model's axis.

Output (<out>, default runs/sweep/<persona>-<model>): contrast/ (the shared contrast set),
<level>-s<seed>/persona.json and <level>-s<seed>/run/ (a full main job), sweep.json, *_vs_diversity.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.experiments.diversity_sweep import SweepConfig, check_sweep, sweep
from analysis.experiments.options import TrackConfig, judge_calibration_of
from anchor.constitution import Persona
from anchor.inputs import InputError
from anchor.questions import LEVELS
from anchor.runlock import run_lock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    TrackConfig.add_arguments(parser, run_flag=True)
    sweep_group = parser.add_argument_group("the sweep")
    sweep_group.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    sweep_group.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every level")
    sweep_group.add_argument(
        "--questions",
        type=int,
        default=20,
        help="training questions per level (same for all), split evenly over the traits; at least two per trait",
    )
    sweep_group.add_argument(
        "--contrast-seed",
        type=int,
        default=0,
        help="seed of the one shared contrast set (all levels and seeds)",
    )
    sweep_group.add_argument("--out", help="output folder (default: runs/sweep/<persona>-<model>)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[SweepConfig, Path, argparse.Namespace, Persona]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        template = TrackConfig.from_args(args)
        config = SweepConfig(
            template, tuple(args.levels), tuple(args.seeds), args.questions, args.contrast_seed
        )
        out = Path(args.out or f"runs/sweep/{Path(template.persona).stem}-{Path(template.model).name}")
        persona = check_sweep(config, out)
    except (InputError, ValueError) as err:
        parser.error(str(err))
    return config, out, args, persona


def main(argv: list[str] | None = None) -> None:
    config, out, args, persona = parse_args(argv)
    with run_lock(out, "sweep folder"):
        result = sweep(config, out, judge_calibration_of(args, config.template, out), persona)
    print(f"results: {result['sweep']}")
    for plot in result["plots"]:
        print(f"plot:    {plot}")
