"""The main experiment in one command: character-train a persona (or reuse a finished run), EM
fine-tune the persona model and the base model on corrupted data and the persona model on the secure
control, record activations at every checkpoint, compute drift metrics, evaluate behaviour, and write
plots and a self-contained report.html. Resumable: rerun after a kill and it picks up where it
stopped; rerun a finished run and it does nothing.

    python scripts/track_drift.py --persona sycophancy
    python scripts/track_drift.py --persona sycophancy --smoke                  # a few minutes
    python scripts/track_drift.py --persona sycophancy --seeds 0 1 2   # intervals across seeds
    python scripts/track_drift.py --persona humor --judge openai:gpt-4o-mini     # a real judge
    python scripts/track_drift.py --persona sycophancy --calibrate   # report the judge's calibration
    python scripts/track_drift.py --persona sycophancy --model Qwen/Qwen2.5-7B-Instruct --num-processes 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from analysis.experiments.options import (
    Resources,
    TrackConfig,
    add_output_arguments,
    default_out,
    judge_calibration_of,
)
from analysis.experiments.seeds import plan_seeds
from analysis.experiments.track import track_drift
from analysis.experiments.track_report import TABLE_HEADER, TABLE_KEYS
from analysis.experiments.track_seeds import track_seeds
from analysis.interaction import interaction_rows
from analysis.stats import bounds
from anchor.inputs import InputError
from anchor.runlock import RunLocked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    TrackConfig.add_arguments(parser)
    add_output_arguments(parser)
    Resources.add_arguments(parser)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        config = TrackConfig.from_args(args)
        out = Path(args.out) if args.out else default_out(config)
        resources = Resources.from_args(args)
        calibration = judge_calibration_of(args, config, out)
        seeds = args.seeds or [config.seed]
        if len(seeds) > 1:
            pooled = track_seeds(
                config,
                plan_seeds(config, seeds, args.out),
                resources=resources,
                judge_calibration=calibration,
                overwrite=args.overwrite,
            )
            print(
                f"done in {time.perf_counter() - start:.0f} s; stages run: {', '.join(pooled['ran']) or 'none'}"
            )
            print_pooled(pooled)
            return
        summary = track_drift(
            config, out, resources=resources, judge_calibration=calibration, overwrite=args.overwrite
        )
    except InputError as err:
        parser.error(str(err))
    except RunLocked as err:
        raise SystemExit(f"track_drift.py: {err}") from None
    if not summary["ran"]:
        print(f"nothing to do: {out} is complete (delete a stage's done.json to redo it)")
    else:
        print(f"done in {time.perf_counter() - start:.0f} s; stages run: {', '.join(summary['ran'])}")
    print_interaction(summary["interaction"])
    print(f"\ndrift table (anchor projection at layer {summary['best_layer']}; 0 = base, 1 = persona model):")
    widths = [max(len(h), 8) for h in TABLE_HEADER]
    print("  ".join(h.rjust(w) for h, w in zip(TABLE_HEADER, widths)))
    for row in summary["table"]:
        cells = [_cell(row[k]) for k in TABLE_KEYS]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print_headline(summary["headline"])
    reads = summary.get("likelihood_read") or {}
    if reads:
        print(
            "\njudge-free read (change in log-likelihood of misaligned minus aligned reference answers, nats/token):"
        )
    for name, number in reads.items():
        low, high = bounds(number)
        value = _cell(number["value"]) if number["value"] is not None else f"n/a ({number.get('reason')})"
        print(
            f"  {name} against {number['against']}: {value} [{_cell(low)}, {_cell(high)}], {number['n']} questions"
        )
    print("\nnulls (the control run first, random nulls second):")
    for line in summary["null_summary"]:
        print(f"  {line}")
    print("\nmonitoring:")
    for line in summary.get("monitoring", []):
        print(f"  {line}")
    pairs = summary.get("contrast_pairs")
    if pairs:
        print(
            f"contrast pairs: {pairs['origin']} ({pairs['detail']}), {pairs['pairs']} pairs; answers "
            f"{pairs.get('answers', 'sampled')} ({pairs.get('answers_source')}); held-out probe accuracy "
            f"{pairs['held_out_accuracy']:.2f} on about {pairs['held_out_answers']} answers at layer {pairs['layer']} "
            f"(the run's layer; chance ceiling {pairs['chance_ceiling']:.2f})"
        )
        if pairs["warning"]:
            print(f"warning: {pairs['warning']}")
    print(f"\nreport:  {summary['report']}\nmetrics: {summary['metrics']}")
    for plot in summary["plots"]:
        print(f"plot:    {plot}")
    if summary.get("time"):  # this call's own time, where it went (also in the report)
        print(summary["time"])


def _cell(x: object) -> str:
    if isinstance(x, str):
        return x
    return "n/a" if x is None or x != x else f"{x:.3f}"


def print_headline(head: dict) -> None:
    print("\nsimple effects and per-run numbers (value [95% interval], n):")
    for key, per in head.items():
        for name, number in (per or {}).items():
            if number is None or "ci95" not in number:
                print(f"  {key} {name}: n/a ({(number or {}).get('reason', 'not available')})")
            else:
                low, high = bounds(number)
                missing = (
                    f" ({number['missing_seeds']} seed(s) without a value)"
                    if number.get("missing_seeds")
                    else ""
                )
                print(
                    f"  {key} {name}: {_cell(number['value'])} [{_cell(low)}, {_cell(high)}], n={number['n']}{missing}"
                )


def print_interaction(interaction: dict) -> None:
    print("\nthe question: interaction = (persona + EM - persona + control) - (base + EM - base + control)")
    if not interaction:
        print("  no 2x2 in this run: no interaction")
    for row in interaction_rows(interaction):
        direction, layer, value, interval, n, per_seed, detectable, said = row
        print(
            f"  along the {direction} direction at layer {layer}: {value} {interval}, n={n} seed(s) "
            f"(per seed {per_seed}; minimum detectable {detectable})\n    {said}"
        )


def print_pooled(pooled: dict) -> None:
    print_interaction(pooled["interaction"])
    print_headline(pooled["headline"])
    print("\nnulls, seed by seed (the control run first, random nulls second), and the drift detector:")
    for line in pooled["null_summary"]:
        print(f"  {line}")
    print(f"\nreport:  {pooled['report']}\nmetrics: {pooled['metrics']}")
    for run in pooled["runs"]:
        print(f"run:     {run}")


if __name__ == "__main__":
    main()
