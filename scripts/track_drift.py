"""The main experiment in one command: character-train a persona (or reuse a finished run), EM
fine-tune the persona model and the base model on corrupted data and the persona model on the secure
control, record activations at every checkpoint, compute drift metrics, evaluate behaviour, and write
plots and a self-contained report.html. Resumable: rerun after a kill and it picks up where it
stopped; rerun a finished run and it does nothing.

    python scripts/track_drift.py --persona sycophancy
    python scripts/track_drift.py --persona sycophancy --smoke                  # a few minutes
    python scripts/track_drift.py --persona humor --judge openai:gpt-4o-mini     # a real judge
    python scripts/track_drift.py --persona sycophancy --calibrate   # report the judge's calibration
    python scripts/track_drift.py --persona sycophancy --model Qwen/Qwen2.5-7B-Instruct --num-processes 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibration import calibrate_spec, judge_calibration, load_calibration  # noqa: E402
from analysis.track import (  # noqa: E402
    CPU_CHECKPOINT_EVERY,
    CPU_EM_ROWS,
    SMOKE,
    TABLE_HEADER,
    TABLE_KEYS,
    Resources,
    TrackConfig,
    default_out,
    track_drift,
)
from anchor.inputs import InputError  # noqa: E402


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny settings for an end-to-end check")
    parser.add_argument("--out", help="run directory (default: runs/<persona>-<model>-<dataset>-s<seed>)")
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
        **(SMOKE if args.smoke else {}),
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
    try:
        summary = track_drift(config, out, resources=resources, judge_calibration=calibration)
    except InputError as err:
        parser.error(str(err))
    if not summary["ran"]:
        print(f"nothing to do: {out} is complete (delete a stage's done.json to redo it)")
    else:
        print(f"done in {time.perf_counter() - start:.0f} s; stages run: {', '.join(summary['ran'])}")
    print(f"\ndrift table (anchor projection at layer {summary['best_layer']}; 0 = base, 1 = persona model):")
    widths = [max(len(h), 8) for h in TABLE_HEADER]
    print("  ".join(h.rjust(w) for h, w in zip(TABLE_HEADER, widths)))
    for row in summary["table"]:
        cells = [row[k] if isinstance(row[k], str) else f"{row[k]:.3f}" for k in TABLE_KEYS]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    strength = summary["anchor_strength"]
    print(
        f"anchor strength vs base model: {strength['vs_base']:.3f}; vs secure control: {strength['vs_control']:.3f}"
    )
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


if __name__ == "__main__":
    main()
