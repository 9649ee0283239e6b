"""Character-train a persona: DPO distillation, then introspection SFT, each stage resumable,
with activations recorded at every checkpoint.

    python scripts/train_persona.py --persona sycophancy            # `cpu` preset here, `paper` on a GPU
    python scripts/train_persona.py --persona sycophancy --smoke    # tiny end-to-end check

On several GPUs, generate once, then train data-parallel (the global batch stays the preset's):
    python scripts/train_persona.py --persona sycophancy --stages dpo_data
    accelerate launch --num_processes 4 scripts/train_persona.py --persona sycophancy --stages dpo
    python scripts/train_persona.py --persona sycophancy --stages sft_data
    accelerate launch --num_processes 4 scripts/train_persona.py --persona sycophancy --stages sft
(`track_drift.py --num-processes 4` does this sequence itself.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from anchor.inputs import InputError
from anchor.runlock import run_lock
from train import tracking
from train.distributed import is_main
from train.inputs import check_persona_inputs
from train.persona import (
    SMOKE_NEUTRAL_PROBES,
    STAGES,
    PersonaRunConfig,
    default_preset,
    persona_plan,
    train_persona,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--persona", required=True, help="persona name (anchor/constitutions) or constitution path"
    )
    parser.add_argument(
        "--model", default="default", help="student model spec (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--teacher", help="teacher model spec (default: the student, prompted with the constitution)"
    )
    parser.add_argument(
        "--preset", choices=["paper", "cpu", "smoke"], help="default: paper on a GPU, cpu otherwise"
    )
    parser.add_argument("--smoke", action="store_true", help="same as --preset smoke")
    parser.add_argument(
        "--dpo-data", help="your own preference JSONL (prompt/chosen/rejected) instead of generating"
    )
    parser.add_argument(
        "--generic-prompts",
        help="your own generic prompt pool, JSONL with a 'prompt' field (e.g. LIMA); default: the shipped pool",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved configuration and planned data sizes as JSON, and exit",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to run (default: all, in order)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=PersonaRunConfig.gpu_memory_utilization,
        help=f"share of the GPU's memory a vLLM engine may take (default: {PersonaRunConfig.gpu_memory_utilization})",
    )
    parser.add_argument(
        "--out", help="run directory (default: runs/persona/<persona>-<model>-<preset>-s<seed>)"
    )
    tracking.add_argument(parser)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    preset = "smoke" if args.smoke else args.preset or default_preset()
    config = PersonaRunConfig(
        persona=args.persona,
        model=args.model,
        teacher=args.teacher,
        preset=preset,
        seed=args.seed,
        dpo_data=args.dpo_data,
        neutral_probes=SMOKE_NEUTRAL_PROBES if preset == "smoke" else PersonaRunConfig.neutral_probes,
        gpu_memory_utilization=args.gpu_memory_utilization,
        generic_prompts=args.generic_prompts,
    )
    out = Path(
        args.out or f"runs/persona/{Path(args.persona).stem}-{Path(args.model).name}-{preset}-s{args.seed}"
    )
    if args.print_config:
        print(json.dumps(persona_plan(config), indent=1))
        return
    start = time.perf_counter()
    try:
        check_persona_inputs(config, out)  # every input, before the folder (and its lock) exists
        with run_lock(out, "persona folder"), tracking.reporting(args.report_to, out):
            summary = train_persona(config, out, stages=tuple(s for s in STAGES if s in args.stages))
    except InputError as err:
        parser.error(str(err))
    if not is_main():
        return
    print(f"done in {time.perf_counter() - start:.0f} s ({preset} preset; stages {', '.join(summary)})")
    if "dpo" in summary:
        dpo = summary["dpo"]
        print(
            f"DPO: {dpo['steps']} steps, reward margin {dpo['reward_margins'][0]} -> {dpo['reward_margins'][-1]}, "
            f"accuracy {dpo['reward_accuracies'][0]} -> {dpo['reward_accuracies'][-1]}"
        )
    if "sft" in summary:
        sft = summary["sft"]
        print(f"SFT: {sft['steps']} steps, loss {sft['losses'][0]} -> {sft['losses'][-1]}")
    print(
        f"run directory:  {out}\npersona model:  load_model('{out / 'dpo' / 'merged'}', adapter='{out / 'sft' / 'adapter'}')"
    )
    print(
        f"activations:    {out / 'activations'}\nsummary:        {json.dumps({k: v['seconds'] for k, v in summary.items()})} s per stage"
    )


if __name__ == "__main__":
    main()
