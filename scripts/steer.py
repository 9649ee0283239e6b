"""Steering and ablation experiments on a finished track_drift.py run.

1. Dose-response: add alpha x persona direction (alpha in units of the persona gap, both signs) at
   the chosen layers of the persona model and of the persona model after EM; measure the anchor
   projection downstream, trait expression and the EM metrics while steered.
2. Ablation: EM fine-tune the persona model again with the persona direction projected out of the
   residual stream during training, and compare its drift with the unablated run: does the
   protection vanish without the anchor direction?

    python scripts/steer.py --run runs/sycophancy-default-insecure-s0
    python scripts/steer.py --run RUN --layers 12 --alphas -4 -2 0 2 4 --read-layer 29
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from analysis import drift  # noqa: E402
from analysis.drift_report import anchor_axis, default_behaviour, step_of  # noqa: E402
from analysis.em_eval import EvalConfig, evaluate  # noqa: E402
from analysis.inputs import check_steer_inputs  # noqa: E402
from analysis.judge import make_judge  # noqa: E402
from analysis.track import RUNS, TrackConfig, persona_run_dir  # noqa: E402
from anchor.constitution import load_persona  # noqa: E402
from anchor.em_questions import MAIN  # noqa: E402
from anchor.generate import HFGenerator  # noqa: E402
from anchor.hooks import ablate  # noqa: E402
from anchor.inputs import InputError  # noqa: E402
from anchor.store import atomic_write_json  # noqa: E402
from probes.contrast import ContrastItem  # noqa: E402
from probes.directions import Directions  # noqa: E402
from probes.steering import dose_response, steering_vectors  # noqa: E402
from train.em import (  # noqa: E402
    EMRunConfig,
    checkpoints,
    em_probe_sets,
    finetune_em,
    load_em_model,
    load_starting_model,
    read_run_config,
)

SMOKE = {"alphas": [-2.0, 0.0, 2.0], "samples": 1, "max_new_tokens": 8}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a finished track_drift.py run directory")
    parser.add_argument(
        "--layers", type=int, nargs="+", help="steering layers (default: the run's best layer)"
    )
    parser.add_argument(
        "--read-layer", type=int, help="layer the anchor projection is read at (default: the last)"
    )
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=[-4, -2, -1, 0, 1, 2, 4], help="in persona gaps"
    )
    parser.add_argument("--samples", type=int, default=2, help="answers per EM question while steered")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--judge", help="judge spec (default: the run's)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the ablation EM run")
    parser.add_argument("--smoke", action="store_true", help="3 alphas, 1 short answer per question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: <run>/steer)")
    args = parser.parse_args()
    if args.smoke:
        args.alphas, args.samples, args.max_new_tokens = (
            SMOKE["alphas"],
            SMOKE["samples"],
            SMOKE["max_new_tokens"],
        )

    run = Path(args.run)
    out = Path(args.out or run / "steer")
    try:  # every input, before any model loads or folder is made
        check_steer_inputs(args.run, args.judge, args.layers, args.read_layer, out)
    except InputError as err:
        parser.error(str(err))
    config = TrackConfig(**json.loads((run / "config.json").read_text()))
    directions_path = run / "analysis" / "directions.safetensors"
    directions = Directions.load(directions_path)
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    layers = args.layers or [summary["best_layer"]]
    read_layer = args.read_layer if args.read_layer is not None else directions.layers[-1]
    vectors = steering_vectors(directions.diff_in_means, directions.layers, layers)
    persona = load_persona(config.persona)
    trait = "; ".join(t.trait for t in persona.traits[:3])
    judge = make_judge(args.judge or config.judge)
    eval_config = EvalConfig(
        samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed, n_boot=500
    )

    # The anchor axis and its 0/1 points at the read layer, from the run's stores.
    em_persona, em_base = run / RUNS["persona"], run / RUNS["base"]
    items = [
        ContrastItem(**json.loads(line))
        for line in (run / "contrast" / "contrast.jsonl").read_text().splitlines()
    ]
    labels = torch.tensor([i.label for i in items])
    axis = anchor_axis(em_persona, em_base, labels)
    v_r = axis.v_r
    base_mean = float(axis.base[:, read_layer].mean())
    persona_mean = float(axis.persona[:, read_layer].mean())
    held_out = [t.questions[-1] for t in persona.traits]
    prompts = em_probe_sets(0, persona_questions=held_out, questions=config.probe_questions)
    default_prompts = list(prompts["em_questions"].conversations) + list(
        prompts["persona_questions"].conversations
    )

    start = time.perf_counter()
    persona_dir = persona_run_dir(config, run)
    models = {
        "persona model": lambda: load_starting_model(
            str(persona_dir / "dpo" / "merged"), str(persona_dir / "sft" / "adapter")
        ),
        "persona model after EM": lambda: load_em_model(em_persona),
    }
    sweeps = {}
    for name, loader in models.items():
        model, tokenizer = loader()

        def behaviour(model=model, tokenizer=tokenizer) -> dict:
            generator = HFGenerator(model, tokenizer, progress=False)
            return evaluate(generator, judge, MAIN, eval_config, trait=trait)[1]

        points = dose_response(
            model,
            tokenizer,
            vectors,
            args.alphas,
            default_prompts,
            read_layer,
            v_r[read_layer],
            base_mean,
            persona_mean,
            behaviour,
        )
        sweeps[name] = [
            {"alpha": p.alpha, "anchor_projection": p.anchor_projection, **_metrics(p.behaviour)}
            for p in points
        ]
        print(
            f"{name}: "
            + ", ".join(f"alpha {p['alpha']:+g}: anchor {p['anchor_projection']:+.2f}" for p in sweeps[name])
        )

    ablation = None
    if not args.no_ablation:
        em_config = read_run_config(em_persona)
        ablated = EMRunConfig(
            **{
                **em_config.__dict__,
                "ablate_directions": str(directions_path),
                "ablate_layers": tuple(layers),
            }
        )
        finetune_em(
            ablated,
            out / "em_ablated",
            em_probe_sets(config.neutral_probes, items, held_out, config.probe_questions),
        )
        curves = {}
        for name, em_run in (
            ("persona + EM", em_persona),
            ("persona + EM, direction ablated", out / "em_ablated"),
        ):
            ckpts = checkpoints(em_run)
            values = [float(axis.anchor(default_behaviour(em_run, c))[:, read_layer].mean()) for c in ckpts]
            curves[name] = {"steps": [step_of(c) for c in ckpts], "anchor_projection": values}
            curves[name]["drift_auc"] = drift.drift_auc(values, curves[name]["steps"])
        model, tokenizer = load_em_model(out / "em_ablated")
        with ablate(model, {layer: vectors[layer] for layer in layers}):
            ablated_metrics = evaluate(
                HFGenerator(model, tokenizer, progress=False), judge, MAIN, eval_config
            )[1]
        ablation = {"layers": layers, "curves": curves, "ablated_em_end": _metrics(ablated_metrics)}

    result = {
        "run": str(run),
        "layers": layers,
        "read_layer": read_layer,
        "judge": judge.spec,
        "sweeps": sweeps,
        "ablation": ablation,
    }
    atomic_write_json(out / "steer.json", result)
    plots = [plot_dose_response(sweeps, layers, read_layer, out / "dose_response.png")]
    if ablation:
        plots.append(plot_ablation(ablation, read_layer, out / "ablation.png"))
    print(f"done in {time.perf_counter() - start:.0f} s\nresults: {out / 'steer.json'}")
    for p in plots:
        print(f"plot:    {p}")


def _metrics(metrics: dict) -> dict:
    keep = ("misaligned_rate", "mean_alignment", "mean_coherence", "mean_trait")
    return {k: metrics[k]["value"] for k in keep if k in metrics}


def plot_dose_response(sweeps: dict, layers: list[int], read_layer: int, path: Path) -> Path:
    panels = [
        ("anchor_projection", f"anchor projection at layer {read_layer}\n(0 = base, 1 = persona)"),
        ("mean_trait", "trait expression (judge, 0-100)"),
        ("misaligned_rate", "misaligned rate"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, panels):
        for name, points in sweeps.items():
            ax.plot(
                [p["alpha"] for p in points], [p.get(key, float("nan")) for p in points], "o-", label=name
            )
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="alpha (persona gaps added)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Steering along the persona direction at layers {layers}: dose-response")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ablation(ablation: dict, read_layer: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, curve in ablation["curves"].items():
        ax.plot(
            curve["steps"],
            curve["anchor_projection"],
            "o-",
            label=f"{name} (drift AUC {curve['drift_auc']:.2f})",
        )
    ax.set(
        xlabel="EM fine-tuning step",
        ylabel=f"anchor projection at layer {read_layer} (0 = base, 1 = persona)",
    )
    ax.set_title(f"Does ablating the persona direction (layers {ablation['layers']}) remove the anchor?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
