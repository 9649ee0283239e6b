"""Character-train a persona: DPO distillation, then introspection SFT, each stage resumable,
with activations recorded at every checkpoint.

    python scripts/train_persona.py --persona sycophancy            # `cpu` preset here, `paper` on a GPU
    python scripts/train_persona.py --persona sycophancy --smoke    # tiny end-to-end check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anchor.inputs import InputError  # noqa: E402
from train.persona import SMOKE_NEUTRAL_PROBES, PersonaRunConfig, default_preset, train_persona  # noqa: E402


def main() -> None:
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", help="run directory (default: runs/persona/<persona>-<model>-<preset>-s<seed>)"
    )
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
    )
    out = Path(
        args.out or f"runs/persona/{Path(args.persona).stem}-{Path(args.model).name}-{preset}-s{args.seed}"
    )
    start = time.perf_counter()
    try:
        summary = train_persona(config, out)
    except InputError as err:
        parser.error(str(err))
    dpo = summary["dpo"]
    print(f"done in {time.perf_counter() - start:.0f} s ({preset} preset)")
    print(
        f"DPO: {dpo['steps']} steps, reward margin {dpo['reward_margins'][0]} -> {dpo['reward_margins'][-1]}, "
        f"accuracy {dpo['reward_accuracies'][0]} -> {dpo['reward_accuracies'][-1]}"
    )
    print(
        f"SFT: {summary['sft']['steps']} steps, loss {summary['sft']['losses'][0]} -> {summary['sft']['losses'][-1]}"
    )
    print(
        f"run directory:  {out}\npersona model:  load_model('{out / 'dpo' / 'merged'}', adapter='{out / 'sft' / 'adapter'}')"
    )
    print(
        f"activations:    {out / 'activations'}\nsummary:        {json.dumps({k: v['seconds'] for k, v in summary.items()})} s per stage"
    )


if __name__ == "__main__":
    main()
