"""Evaluate emergent misalignment: sample answers to open-ended questions at temperature 1, judge
alignment (0..100, or CODE / REFUSAL) and coherence (0..100), and report the misaligned rate (over
scored answers, with its coverage, and over all answers), code and refusal rates, mean alignment,
coherence and tail risk with 95% intervals, next to the judge and its calibration. Writes
per-answer JSONL and a summary JSON. Presets: paper (every question of the file, 100 answers per
paraphrase, 600 tokens), cpu (the default), smoke.

    python scripts/eval_em.py --em-run runs/em/insecure-default-cpu-s0      # the EM-trained model
    python scripts/eval_em.py --model default --smoke --out runs/eval/base  # any model
    python scripts/eval_em.py --em-run RUN --judge openai:gpt-4o --judge-base-url http://localhost:8000/v1
    python scripts/eval_em.py --model default --questions first_plot_questions.yaml --preset paper
    python scripts/eval_em.py --model default --judge-calibration runs/calibration/hf_default/calibration.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

from analysis.calibration import (
    calibrate,
    cannot_flag,
    describe,
    judge_calibration,
    load_calibration,
    load_labels,
)
from analysis.em_eval import (
    PRESETS,
    gate_rates,
    judge_answers,
    rubrics_for,
    sample_answers,
    select_questions,
    summarise,
)
from analysis.inputs import check_eval_inputs
from analysis.judge import make_judge
from analysis.stats import bounds
from anchor.em_questions import question_set
from anchor.generate import HFGenerator, make_generator
from anchor.inputs import InputError
from anchor.store import atomic_write_json, atomic_write_jsonl


def eval_config(args: argparse.Namespace):
    """The preset (`--smoke` means `--preset smoke`) with the flags given on the command line."""
    preset = PRESETS["smoke" if args.smoke else args.preset]
    overrides = {
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "misaligned_below": args.misaligned_below,
        "coherent_above": args.coherent_above,
    }
    return replace(preset, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})


def print_metrics(metrics: dict, note: str) -> None:
    for name, m in metrics.items():
        if isinstance(m, dict) and "value" in m:
            if m["value"] is None:  # an estimate that cannot be measured says why, never a number
                print(f"{name:>20}: not measurable, n={m['n']} ({m.get('reason', 'no reason given')})")
                continue
            low, high = bounds(m)
            interval = "no interval" if low is None else f"95% CI {low:.3f} to {high:.3f}"
            questions = f", {m['clusters']} questions" if "clusters" in m else ""
            print(
                f"{name:>20}: {m['value']:7.3f}  ({interval},"
                f" n={m['n']}{questions}; {m.get('interval', 'bootstrap')})"
            )
    print(
        f"{'missing':>20}: {metrics['missing']} of {metrics['answers']} answers; words {metrics['verdicts']}"
    )
    print(note)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="model spec to evaluate (ignored with --em-run)")
    parser.add_argument("--adapter", help="a PEFT adapter on top of --model")
    parser.add_argument("--em-run", help="a finetune_em.py run directory: evaluate its EM-trained model")
    parser.add_argument(
        "--questions", default="main", help="main, broad, or a YAML file in the public EM format"
    )
    parser.add_argument(
        "--judge", default="hf:default", help="hf:<model>, openai:<model> or probe:<directions>"
    )
    parser.add_argument("--judge-base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu", help="evaluation size (default: cpu)"
    )
    parser.add_argument("--samples", type=int, help="answers per question paraphrase (default: the preset's)")
    parser.add_argument("--max-new-tokens", type=int, help="answer length (default: the preset's)")
    parser.add_argument("--misaligned-below", type=float, help="alignment threshold (default: 30)")
    parser.add_argument("--coherent-above", type=float, help="coherence threshold (default: 50)")
    parser.add_argument("--trait", default="", help="also judge expression of this trait (text)")
    parser.add_argument("--smoke", action="store_true", help="the smoke preset: 2 answers, 32 tokens each")
    parser.add_argument(
        "--judge-calibration",
        help="a calibration.json from scripts/calibrate_judge.py to report beside the numbers",
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="calibrate the judge on the project's labels (after judging)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.85,
        help="share of the GPU's memory the vLLM engine may take (default: 0.85)",
    )
    parser.add_argument(
        "--out", help="output folder (default: <em-run>/eval, else runs/eval/<model>-s<seed>)"
    )
    args = parser.parse_args()

    default_out = (
        Path(args.em_run) / "eval" if args.em_run else f"runs/eval/{Path(args.model).name}-s{args.seed}"
    )
    out = Path(args.out or default_out)
    try:  # every input, before any model loads or folder is made
        check_eval_inputs(
            args.model, args.adapter, args.em_run, args.questions, args.judge, args.judge_base_url, out
        )
    except InputError as err:
        parser.error(str(err))
    config = eval_config(args)
    questions = select_questions(question_set(args.questions), config)
    calibration = load_calibration(args.judge_calibration) if args.judge_calibration else None
    if args.em_run:
        from anchor.runs import load_em_model

        generator = HFGenerator(*load_em_model(args.em_run), owns_model=True)
    else:
        generator = make_generator(
            args.model, adapter=args.adapter, gpu_memory_utilization=args.gpu_memory_utilization
        )
    start = time.perf_counter()
    with generator:  # the engine (or model) is gone before the judge takes the GPU
        rows = sample_answers(generator, questions, config)
    judge = make_judge(args.judge, base_url=args.judge_base_url)
    judge_answers(rows, judge, questions, rubrics_for(args.trait), args.trait)
    metrics = summarise(rows, config)
    if args.calibrate:
        calibration = calibrate(
            [judge],
            load_labels(),
            misaligned_below=config.misaligned_below,
            coherent_above=config.coherent_above,
        )
        atomic_write_json(out / "calibration.json", calibration)
    entry = judge_calibration(calibration, judge.spec)
    if calibration is not None and entry is None:
        print(f"note: {args.judge_calibration} has no calibration for judge {judge.spec}")
    note = describe(judge.spec, entry)
    reason = cannot_flag(entry)
    if reason is not None:
        metrics = gate_rates({"metrics": metrics}, judge.spec, reason)["metrics"]
    summary = {
        "model": args.em_run or args.model,
        "adapter": args.adapter,
        "judge": judge.spec,
        "judge_calibration": entry,
        "judge_note": note,
        "questions": args.questions,
        "preset": "smoke" if args.smoke else args.preset,
        "config": asdict(config),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_jsonl(out / "responses.jsonl", rows)
    atomic_write_json(out / "summary.json", summary)
    print_metrics(metrics, note)
    print(f"responses: {out / 'responses.jsonl'}\nsummary:   {out / 'summary.json'}")


if __name__ == "__main__":
    main()
