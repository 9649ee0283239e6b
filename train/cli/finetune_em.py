"""Emergent-misalignment fine-tuning: LoRA SFT on a corrupted (or control) dataset, on the base model
or a persona model, with activations recorded at every checkpoint. Resumable: a finished run is
skipped, a killed one reruns its stage cleanly.

    python scripts/finetune_em.py --dataset insecure --smoke --out runs/em/smoke
    python scripts/finetune_em.py --dataset secure --persona-run runs/persona/sycophancy-default-cpu-s0
    python scripts/finetune_em.py --dataset my_data.jsonl --preset rank1 --layer 24   # Model Organisms' rank-1 adapter
    python scripts/finetune_em.py --preset paper --print-config          # the resolved recipe, no training
    accelerate launch --num_processes 4 scripts/finetune_em.py --dataset insecure --preset paper   # DDP
    accelerate launch --config_file train/accelerate/zero3.yaml --num_processes 8 scripts/finetune_em.py ...

Under accelerate the preset's effective batch is split over the processes (same steps and
checkpoints as one process); rank 0 alone writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from anchor.inputs import InputError
from anchor.runlock import run_lock
from train import tracking
from train.data import NAMES
from train.distributed import is_main, world_size
from train.em import PRESETS, EMRunConfig, em_plan, em_probe_sets, finetune_em
from train.inputs import check_contrast_items, check_em_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="insecure", help=f"one of {', '.join(NAMES)}, or a chat JSONL path"
    )
    parser.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", help="a PEFT adapter merged into the model before EM")
    parser.add_argument(
        "--persona-run",
        help="a train_persona.py run: EM starts from its persona model (overrides --model/--adapter)",
    )
    parser.add_argument(
        "--contrast", help="persona contrast JSONL (fit_directions.py) to read at every checkpoint"
    )
    parser.add_argument(
        "--preset", choices=list(PRESETS), default="cpu", help="training preset (default: cpu)"
    )
    parser.add_argument("--smoke", action="store_true", help="same as --preset smoke")
    parser.add_argument(
        "--rank", type=int, help="LoRA rank on the preset's modules (overrides the preset; 1 is allowed)"
    )
    parser.add_argument("--layer", type=int, help="the rank1 preset's layer (default: the middle layer)")
    parser.add_argument("--alpha", type=int, help="LoRA alpha (default: twice the rank)")
    parser.add_argument("--record-every", type=int, help="record activations every N optimiser steps")
    parser.add_argument("--max-rows", type=int, help="train on a seeded subset of this many rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="run directory (default: runs/em/<dataset>-<model>-<preset>-s<seed>)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved configuration and planned data sizes as JSON, and exit",
    )
    tracking.add_argument(parser)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    model, adapter = args.model, args.adapter
    if args.persona_run:
        run = Path(args.persona_run)
        model, adapter = str(run / "dpo" / "merged"), str(run / "sft" / "adapter")
    preset = "smoke" if args.smoke else args.preset
    config = EMRunConfig(
        dataset=args.dataset,
        model=model,
        adapter=adapter,
        preset=preset,
        seed=args.seed,
        lora_rank=args.rank,
        lora_alpha=args.alpha,
        record_every=args.record_every,
        max_rows=args.max_rows,
        layer=args.layer,
    )
    tag = Path(args.persona_run).name if args.persona_run else Path(args.model).name
    out = Path(args.out or f"runs/em/{Path(args.dataset).stem}-{tag}-{preset}-s{args.seed}")
    try:  # every input, before any model loads or folder is made
        check_em_inputs(config, out, contrast=args.contrast, persona_run=args.persona_run)
    except InputError as err:
        parser.error(str(err))
    if args.print_config:
        print(json.dumps(em_plan(config), indent=1))
        return
    contrast = check_contrast_items(args.contrast) if args.contrast else None
    start = time.perf_counter()
    with run_lock(out), tracking.reporting(args.report_to, out):
        done = finetune_em(config, out, em_probe_sets(contrast=contrast))
    if not is_main():
        return
    print(
        f"done in {time.perf_counter() - start:.0f} s: {done['steps']} steps on {done['rows']} rows "
        f"({world_size()} process{'es' if world_size() > 1 else ''})"
    )
    if done["losses"]:
        print(f"loss {done['losses'][0]} -> {done['losses'][-1]}")
    print(f"run directory: {out}\nEM adapter:    {out / 'em' / 'adapter'}")
    print(f"activations:   {out / 'activations'} (checkpoints at steps {done['recorded']})")


if __name__ == "__main__":
    main()
