"""Did character training move the model along the persona axis?

Samples answers to the run's held-out persona questions with no system prompt from the base model,
the post-DPO model and the final persona model; reads each model's own response-averaged
activations; projects them onto the persona direction fitted on the base model
(`scripts/fit_directions.py`); reports trained minus base at the direction's best layer with a
bootstrap 95% interval.

    python scripts/persona_shift.py --run runs/persona/sycophancy-default-cpu-s0 \\
        --directions runs/directions/sycophancy-default-s0/directions.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.projection import bootstrap_mean_difference, project
from anchor import HFGenerator, SamplingConfig, extract, load_model
from anchor.constitution import load_persona
from anchor.store import atomic_write_json
from probes.directions import Directions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a scripts/train_persona.py run directory")
    parser.add_argument("--directions", required=True, help="directions.safetensors fitted on the base model")
    parser.add_argument("--samples", type=int, default=4, help="answers per held-out question and model")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="summary JSON (default: <run>/eval/persona_shift.json)")
    args = parser.parse_args()

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    directions = Directions.load(args.directions)
    best = directions.best_layer()
    persona = load_persona(config["persona"])
    questions = [t.questions[-1] for t in persona.traits]  # held out from training
    prompts = [[{"role": "user", "content": q}] for q in questions]
    models = {
        "base": (config["model"], None),
        "dpo": (str(run / "dpo" / "merged"), None),
        "persona": (str(run / "dpo" / "merged"), run / "sft" / "adapter"),
    }
    sampling = SamplingConfig(args.max_new_tokens, temperature=0.7, n=args.samples, seed=args.seed)
    projections, examples = {}, {}
    for name, (spec, adapter) in models.items():
        model, tokenizer = load_model(spec, adapter=adapter)
        replies = HFGenerator(model, tokenizer).generate(prompts, sampling)
        conversations = [
            [*p, {"role": "assistant", "content": r}]
            for p, rs in zip(prompts, replies)
            for r in rs
            if r.strip()
        ]
        acts = extract(model, tokenizer, conversations, layers=directions.layers)
        projections[name] = project(acts.tensor, directions.diff_in_means)  # [n, L]
        examples[name] = conversations[0][-1]["content"]
    column = directions.layers.index(best)
    summary = {"persona": config["persona"], "best_layer": best, "responses": {}, "shift_vs_base": {}}
    for name in models:
        summary["responses"][name] = {
            "n": len(projections[name]),
            "mean_projection": float(projections[name][:, column].mean()),
        }
    for name in ("dpo", "persona"):
        diff, lo, hi = bootstrap_mean_difference(
            projections[name][:, column], projections["base"][:, column], seed=args.seed
        )
        per_layer = (projections[name].mean(0) - projections["base"].mean(0)).tolist()
        summary["shift_vs_base"][name] = {"difference": diff, "ci95": [lo, hi], "per_layer": per_layer}
    summary["examples"] = examples
    out = Path(args.out or run / "eval" / "persona_shift.json")
    atomic_write_json(out, summary)
    for name, shift in summary["shift_vs_base"].items():
        print(
            f"{name} - base, projection on the persona direction at layer {best}: {shift['difference']:+.3f} "
            f"(95% CI {shift['ci95'][0]:+.3f} to {shift['ci95'][1]:+.3f})"
        )
    print(f"summary: {out}")


if __name__ == "__main__":
    main()
