"""Steering and ablation experiments on a finished track_drift.py run (`analysis.experiments.steer`
says what each stage measures).

1. Dose-response: add alpha x persona direction (alpha in units of the persona gap, both signs) at
   the chosen layers of the persona model and of the persona model after EM; the steered answers are
   read clean (no hooks) by the run's persona probe, and judged while steered.
2. Ablation: EM fine-tune the persona model again with the persona direction projected out of the
   residual stream during training, read clean and with the ablation on, beside the control
   "persona + ablation, no EM".

    python scripts/steer.py --run runs/sycophancy-default-insecure-s0
    python scripts/steer.py --run RUN --layers 12 --alphas -4 -2 0 2 4 --read-layer 29
    python scripts/steer.py --run RUN --smoke       # 3 alphas, 1 short answer per question
    python scripts/steer.py --run RUN_S0 RUN_S1 RUN_S2 --out runs/steer-seeds   # pooled over runs

The run's config.json gives the model, persona and judge. Outputs (default <run>/steer/): stages
dose/, em_ablated/, ablation/ (resumable), steer.json, dose_response.png, ablation.png.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from analysis.experiments.inputs import check_steer_inputs
from analysis.experiments.steer import SMOKE, SteerConfig, plan_steer, pool_sweeps, steer_run
from analysis.stats import bounds
from anchor.inputs import InputError
from anchor.runlock import RunLocked, run_lock
from anchor.store import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = SteerConfig()
    parser.add_argument(
        "--run",
        required=True,
        nargs="+",
        help="a finished track_drift.py run directory; several (e.g. one per seed): each is steered, then "
        "the clean read-out at each alpha is pooled over them (mean, t-interval, n = runs)",
    )
    parser.add_argument(
        "--layers", type=int, nargs="+", help="steering layers (default: the run's best layer)"
    )
    parser.add_argument(
        "--read-layer",
        type=int,
        help="layer the in-hook anchor projection is read at; not a steered layer (default: the last "
        "layer that is not steered)",
    )
    parser.add_argument(
        "--probe-layer",
        type=int,
        help="layer of the persona probe that scores the generated answers in the clean pass "
        "(default: the run's best layer)",
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=list(d.alphas), help="in persona gaps")
    parser.add_argument(
        "--samples", type=int, default=d.samples, help="answers per EM question while steered"
    )
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument(
        "--eval-judge", help="judge of the steered answers (default: the run's judge, from its config.json)"
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip the ablation EM run")
    parser.add_argument("--smoke", action="store_true", help="3 alphas, 1 short answer per question")
    parser.add_argument(
        "--sample-seed", type=int, default=d.seed, help="sampling seed of the steered answers"
    )
    parser.add_argument("--out", help="output folder (default: <run>/steer; with several runs <out>/run<i>)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    config = SteerConfig(
        layers=tuple(args.layers) if args.layers else None,
        read_layer=args.read_layer,
        probe_layer=args.probe_layer,
        alphas=tuple(args.alphas),
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        judge=args.eval_judge,
        ablation=not args.no_ablation,
        seed=args.sample_seed,
    )
    if args.smoke:
        config = replace(config, **SMOKE)
    runs = [Path(r) for r in args.run]
    outs = [
        Path(args.out) / f"run{i}" if args.out and len(runs) > 1 else Path(args.out or r / "steer")
        for i, r in enumerate(runs)
    ]
    plans = []
    for run, out in zip(runs, outs):
        try:  # every input, before any model loads or folder is made
            check_steer_inputs(str(run), args.eval_judge, args.layers, args.read_layer, out)
            plans.append(plan_steer(run, config, out))
        except (InputError, ValueError, KeyError) as err:
            parser.error(f"--run {run}: {err}")
    start = time.perf_counter()
    results = []
    for plan in plans:
        if plan.read_layer < max(plan.layers):
            print(
                f"warning: read layer {plan.read_layer} is upstream of steered layer {max(plan.layers)}: the "
                "in-hook anchor read cannot see that steering (the clean-pass probe read-out is unaffected)"
            )
        try:
            with run_lock(plan.run):
                result = steer_run(plan)
        except RunLocked as err:
            raise SystemExit(f"steer.py: {err}") from None
        for name, points in result["sweeps"].items():
            print(
                f"{name}: "
                + ", ".join(
                    f"alpha {p['alpha']:+g}: clean probe P(persona) {p['clean_probe_probability']:.3f}"
                    f" (in-hook anchor {p['anchor_projection']:+.2f})"
                    for p in points
                )
            )
        ablation = result["ablation"]
        if ablation:
            print(
                f"anchor at layer {plan.read_layer}: persona + ablation, no EM "
                f"{ablation['persona + ablation, no EM']['anchor_projection']:+.2f}; "
                + "; ".join(
                    f"{k} at the end {c['anchor_projection'][-1]:+.2f}" for k, c in ablation["curves"].items()
                )
            )
        print(f"results: {result['steer_json']}")
        for p in result["plots"]:
            print(f"plot:    {p}")
        results.append(result)
    print(f"done in {time.perf_counter() - start:.0f} s")
    if len(results) > 1:
        pooled_out = Path(args.out) if args.out else runs[0].parent / "steer-pooled"
        pooled = pool_sweeps(results)
        atomic_write_json(pooled_out / "steer_pooled.json", pooled)
        print(f"pooled over {len(results)} runs: {pooled_out / 'steer_pooled.json'}")
        for name, points in pooled["sweeps"].items():
            print(
                f"{name}: "
                + ", ".join(
                    f"alpha {p['alpha']:+g}: clean P(persona) {_num(p['clean_probe_probability'])}"
                    for p in points
                )
            )


def _num(number: dict) -> str:
    if number["value"] is None:
        return "n/a"
    low, high = bounds(number)
    return f"{number['value']:.3f} [{low if low is None else round(low, 3)}, {high if high is None else round(high, 3)}]"
