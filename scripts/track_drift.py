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
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibration import calibrate_spec, judge_calibration, load_calibration  # noqa: E402
from analysis.stats import bounds  # noqa: E402
from analysis.track import (  # noqa: E402
    CPU_CHECKPOINT_EVERY,
    CPU_EM_ROWS,
    SMOKE,
    Resources,
    TrackConfig,
    default_out,
    track_drift,
)
from analysis.track_report import TABLE_HEADER, TABLE_KEYS  # noqa: E402
from analysis.track_seeds import default_pooled_out, track_seeds  # noqa: E402
from anchor.inputs import InputError  # noqa: E402
from anchor.runlock import RunLocked  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--persona", required=True, help="persona name (anchor/constitutions) or constitution path"
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--em-dataset", default="insecure", help="corrupted dataset name or chat JSONL path")
    parser.add_argument("--control", default="secure", help="control dataset name or chat JSONL path")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help=f"record activations every N EM steps (default: {CPU_CHECKPOINT_EVERY} on CPU, the EM preset's "
        "on GPU and with --smoke)",
    )
    parser.add_argument(
        "--em-rows",
        type=int,
        help=f"EM training rows (default: {CPU_EM_ROWS} on CPU, all on GPU, the smoke preset's with --smoke)",
    )
    parser.add_argument(
        "--contrast",
        help='your contrast pairs, JSON {"elicit": [...], "suppress": [...]} (default: the persona\'s own '
        "<name>.contrast.json, else derived from the constitution)",
    )
    parser.add_argument(
        "--teacher",
        help="teacher model spec: distils the persona and writes derived contrast pairs (default: the model "
        "itself for distillation, a templated negation of each trait for the pairs)",
    )
    parser.add_argument("--persona-run", help="reuse this finished train_persona.py run directory")
    parser.add_argument(
        "--filter-contrast",
        choices=["auto", "on", "off"],
        default="auto",
        help="Persona Vectors' filter on the contrast set, scored by --judge: keep pairs whose elicited "
        "answer shows the trait (>= 50) and suppressed one does not (< 50), both coherent (>= 50). auto: on "
        "with an openai: judge, off with a local one (a small model's scores would decide the set)",
    )
    parser.add_argument(
        "--judge", default="hf:default", help="hf:<model>, openai:<model> or probe:<directions>"
    )
    parser.add_argument(
        "--judge-calibration",
        help="a calibration.json from scripts/calibrate_judge.py for --judge, reported beside the behaviour",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate --judge on the project's labels first (about 2 min for hf:default on CPU); "
        "kept in <run>/judge_calibration.json",
    )
    parser.add_argument("--seed", type=int, default=0, help="one seed (default: 0)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard finished stages whose inputs changed (default: keep them under <run>/superseded/)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="several seeds: the whole experiment once per seed, then every headline number pooled as "
        "the mean with a t-interval over seeds (in <out>/analysis/metrics.json)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings for an end-to-end check (monitoring on)"
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="full monitoring: the assistant axis, behaviour at every 2nd recorded checkpoint (behavioural "
        "alarm, lead time) and triggered question variants at the end of EM (alarms and phase transitions "
        "always run); on CPU it adds several minutes",
    )
    parser.add_argument(
        "--out",
        help="run directory (default: runs/<persona>-<model>-<dataset>-s<seed>); with --seeds the pooled "
        "folder, each seed's run in <out>/s<seed> (default: runs/...-seeds<a>-<b>, seeds' runs as without it)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=Resources.num_processes,
        help="train data-parallel on this many processes (GPUs) through accelerate; generation, "
        "evaluation and analysis stay in this process (default: 1)",
    )
    parser.add_argument(
        "--accelerate-config",
        help="an accelerate config for the training stages, e.g. train/accelerate/zero3.yaml for "
        "models that do not fit one GPU (default: plain DDP)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=Resources.gpu_memory_utilization,
        help=f"share of the GPU's memory a vLLM engine may take (default: {Resources.gpu_memory_utilization})",
    )
    args = parser.parse_args()

    config = TrackConfig(
        persona=args.persona,
        model=args.model,
        em_dataset=args.em_dataset,
        control=args.control,
        seed=args.seed,
        judge=args.judge,
        persona_run=args.persona_run,
        checkpoint_every=args.checkpoint_every,
        em_rows=args.em_rows,
        contrast=args.contrast,
        teacher=args.teacher,
        filter_contrast=args.filter_contrast == "on"
        or (args.filter_contrast == "auto" and args.judge.startswith("openai:")),
        **(SMOKE if args.smoke else {}),
        **({"monitor": True} if args.monitor else {}),
    )
    out = Path(args.out) if args.out else default_out(config)
    start = time.perf_counter()
    resources = Resources(args.num_processes, args.gpu_memory_utilization, args.accelerate_config)
    calibration = None
    if args.judge_calibration:
        calibration = judge_calibration(load_calibration(args.judge_calibration), args.judge)
        if calibration is None:
            parser.error(
                f"--judge-calibration {args.judge_calibration}: no calibration for judge {args.judge}"
            )
    elif args.calibrate:
        calibration = judge_calibration(
            calibrate_spec(args.judge, out / "judge_calibration.json"), args.judge
        )
    seeds = args.seeds or [args.seed]
    try:
        if len(seeds) > 1:
            pooled_out = Path(args.out) if args.out else default_pooled_out(config, seeds)
            runs = [pooled_out / f"s{s}" if args.out else default_out(replace(config, seed=s)) for s in seeds]
            pooled = track_seeds(
                config,
                seeds,
                runs,
                pooled_out,
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
    print(f"\ndrift table (anchor projection at layer {summary['best_layer']}; 0 = base, 1 = persona model):")
    widths = [max(len(h), 8) for h in TABLE_HEADER]
    print("  ".join(h.rjust(w) for h, w in zip(TABLE_HEADER, widths)))
    for row in summary["table"]:
        cells = [_cell(row[k]) for k in TABLE_KEYS]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print_headline(summary["headline"])
    print("\nagainst the null:")
    for line in summary["null_summary"]:
        print(f"  {line}")
    print("\nmonitoring:")
    for line in summary.get("monitoring", []):
        print(f"  {line}")
    pairs = summary.get("contrast_pairs")
    if pairs:
        print(
            f"contrast pairs: {pairs['origin']} ({pairs['detail']}), {pairs['pairs']} pairs, held-out probe "
            f"accuracy {pairs['held_out_accuracy']:.2f} at layer {pairs['best_layer']}"
        )
        if pairs["warning"]:
            print(f"warning: {pairs['warning']}")
    print(f"\nreport:  {summary['report']}\nmetrics: {summary['metrics']}")
    for plot in summary["plots"]:
        print(f"plot:    {plot}")


def _cell(x: object) -> str:
    if isinstance(x, str):
        return x
    return "n/a" if x is None or x != x else f"{x:.3f}"


def print_headline(head: dict) -> None:
    print("\nheadline numbers (value [95% interval], n):")
    for key, per in head.items():
        for name, number in (per or {}).items():
            if number is None or "ci95" not in number:
                print(f"  {key} {name}: n/a ({(number or {}).get('reason', 'not available')})")
            else:
                low, high = bounds(number)
                print(
                    f"  {key} {name}: {_cell(number['value'])} [{_cell(low)}, {_cell(high)}], n={number['n']}"
                )


def print_pooled(pooled: dict) -> None:
    print_headline(pooled["headline"])
    print("\nagainst the null, seed by seed (and the drift detector):")
    for line in pooled["null_summary"]:
        print(f"  {line}")
    print(f"\nreport:  {pooled['report']}\nmetrics: {pooled['metrics']}")
    for run in pooled["runs"]:
        print(f"run:     {run}")


if __name__ == "__main__":
    main()
