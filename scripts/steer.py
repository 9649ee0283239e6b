"""Steering and ablation experiments on a finished track_drift.py run.

1. Dose-response: add alpha x persona direction (alpha in units of the persona gap, both signs) at
   the chosen layers of the persona model and of the persona model after EM. For each alpha:
   - clean read-out (the measure): answers to the EM and held-out persona questions are generated
     while steered, then read in a separate pass with NO hooks and scored by the run's persona
     probe (`analysis/directions.safetensors`, at --probe-layer); only a change in the text moves it;
   - the judge's behaviour metrics (misaligned rate, alignment, coherence, trait) while steered;
   - the in-hook anchor projection at --read-layer (a diagnostic: downstream of an added persona
     vector it partly measures the vector itself). The read layer must not be a steered layer.
2. Ablation: EM fine-tune the persona model again with the persona direction projected out of the
   residual stream during training. Its checkpoints are read clean (ablation lifted) and, as
   `<probe set>.ablated`, with the ablation on. A control, "persona + ablation, no EM" (the persona
   model with the direction projected out and no EM training), is read the same way, so the
   ablation's own effect on the anchor read is separated from EM's. The anchor is never read at an
   ablated layer.

    python scripts/steer.py --run runs/sycophancy-default-insecure-s0
    python scripts/steer.py --run RUN --layers 12 --alphas -4 -2 0 2 4 --read-layer 29
    python scripts/steer.py --run RUN --smoke       # 3 alphas, 1 short answer per question

Outputs (default <run>/steer/): steer.json, dose_response.png, ablation.png.
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
from analysis.drift_report import anchor_axis  # noqa: E402
from analysis.em_eval import EvalConfig, evaluate  # noqa: E402
from analysis.inputs import check_steer_inputs  # noqa: E402
from analysis.judge import make_judge  # noqa: E402
from analysis.stats import (
    across_seeds,  # noqa: E402
    bounds,  # noqa: E402
)
from analysis.track import RUNS, TrackConfig, persona_run_dir  # noqa: E402
from anchor.constitution import load_persona  # noqa: E402
from anchor.em_questions import MAIN  # noqa: E402
from anchor.extract import extract  # noqa: E402
from anchor.generate import HFGenerator, SamplingConfig  # noqa: E402
from anchor.hooks import ablate  # noqa: E402
from anchor.inputs import InputError  # noqa: E402
from anchor.runs import checkpoints, em_store, step_of  # noqa: E402
from anchor.store import atomic_write_json  # noqa: E402
from probes.contrast import ContrastItem  # noqa: E402
from probes.directions import Directions  # noqa: E402
from probes.steering import (  # noqa: E402
    DoseResponse,
    LinearReadout,
    check_read_layer,
    dose_response,
    steering_vectors,
)
from train.em import (  # noqa: E402
    EMRunConfig,
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

    runs = [Path(r) for r in args.run]
    outs = [
        Path(args.out) / f"run{i}" if args.out and len(runs) > 1 else Path(args.out or r / "steer")
        for i, r in enumerate(runs)
    ]
    for run, out in zip(runs, outs):
        try:  # every input, before any model loads or folder is made
            check_steer_inputs(str(run), args.judge, args.layers, args.read_layer, out)
        except InputError as err:
            parser.error(str(err))
    results = [steer_run(args, parser, run, out) for run, out in zip(runs, outs)]
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


def pool_sweeps(results: list[dict]) -> dict:
    """Each model's dose-response pooled over runs (seeds): at every alpha the clean probe
    read-out's mean with a t-interval over the runs, n = runs."""
    sweeps = {}
    for name, points in results[0]["sweeps"].items():
        sweeps[name] = []
        for k, point in enumerate(points):
            values = [r["sweeps"][name][k]["clean_probe_probability"] for r in results]
            values = [v if v is not None else float("nan") for v in values]
            sweeps[name].append({"alpha": point["alpha"], "clean_probe_probability": across_seeds(values)})
    return {"runs": [r["run"] for r in results], "sweeps": sweeps}


def steer_run(args: argparse.Namespace, parser: argparse.ArgumentParser, run: Path, out: Path) -> dict:
    """The dose-response and ablation experiments on one finished run; returns steer.json."""
    config = TrackConfig(**json.loads((run / "config.json").read_text()))
    directions_path = run / "analysis" / "directions.safetensors"
    directions = Directions.load(directions_path)
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    layers = args.layers or [summary["best_layer"]]
    read_layer = args.read_layer
    if read_layer is None:
        read_layer = max((x for x in directions.layers if x not in layers), default=None)
    try:
        if read_layer is None:
            raise ValueError("every layer of the run's directions is steered; give --read-layer")
        check_read_layer(read_layer, layers)
        probe_layer = args.probe_layer if args.probe_layer is not None else summary["best_layer"]
        readout = LinearReadout.from_directions(directions, probe_layer)
    except (ValueError, KeyError) as err:
        parser.error(f"--layers/--read-layer/--probe-layer: {err}")
    if read_layer < max(layers):
        print(
            f"warning: read layer {read_layer} is upstream of steered layer {max(layers)}: the in-hook "
            "anchor read cannot see that steering (the clean-pass probe read-out is unaffected)"
        )
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

        generator = HFGenerator(model, tokenizer, progress=False)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, n=args.samples, seed=args.seed)

        def behaviour(generator=generator) -> dict:
            return evaluate(generator, judge, MAIN, eval_config, trait=trait)[1]

        def generate(prompts, generator=generator, sampling=sampling) -> list[list[str]]:
            return generator.generate(prompts, sampling)

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
            generate,
            readout,
        )
        sweeps[name] = [_point(p) for p in points]
        print(
            f"{name}: "
            + ", ".join(
                f"alpha {p['alpha']:+g}: clean probe P(persona) {p['clean_probe_probability']:.3f}"
                f" (in-hook anchor {p['anchor_projection']:+.2f})"
                for p in sweeps[name]
            )
        )
        del model, tokenizer, generator

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
        # Clean reads (ablation lifted) of both EM runs: the drift curves proper.
        curves = {
            name: _curve(axis, em_run, read_layer)
            for name, em_run in (
                ("persona + EM", em_persona),
                ("persona + EM, direction ablated", out / "em_ablated"),
            )
        }
        # The ablated run read with its ablation on, and the control without EM, read the same way.
        with_ablation = _curve(axis, out / "em_ablated", read_layer, suffix=".ablated")
        model, tokenizer = models["persona model"]()
        with ablate(model, {layer: vectors[layer] for layer in layers}):
            control_acts = _default_behaviour_reads(model, tokenizer, prompts)
            control_metrics = evaluate(
                HFGenerator(model, tokenizer, progress=False), judge, MAIN, eval_config
            )[1]
        control = {
            "anchor_projection": float(axis.anchor(control_acts)[:, read_layer].mean()),
            **_metrics(control_metrics),
        }
        del model, tokenizer
        model, tokenizer = load_em_model(out / "em_ablated")
        with ablate(model, {layer: vectors[layer] for layer in layers}):
            ablated_metrics = evaluate(
                HFGenerator(model, tokenizer, progress=False), judge, MAIN, eval_config
            )[1]
        ablation = {
            "layers": layers,
            "curves": curves,
            "read_with_ablation_on": {"persona + EM, direction ablated": with_ablation},
            "persona + ablation, no EM": control,
            "ablated_em_end": _metrics(ablated_metrics),
        }
        print(
            f"anchor at layer {read_layer}: persona + ablation, no EM {control['anchor_projection']:+.2f}; "
            + "; ".join(f"{k} at the end {c['anchor_projection'][-1]:+.2f}" for k, c in curves.items())
        )

    result = {
        "run": str(run),
        "layers": layers,
        "read_layer": read_layer,
        "probe_layer": readout.layer,
        "measure": "clean_probe_*: steered answers read with no hooks by the run's persona probe",
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
    return result


def _point(p: DoseResponse) -> dict:
    """One alpha of a sweep: the clean read-out of the answers, the in-hook read, the metrics."""
    clean = p.clean
    return {
        "alpha": p.alpha,
        "clean_probe_probability": clean.mean_probability if clean else None,
        "clean_probe_logit": clean.mean_logit if clean else None,
        "answers": len(clean.logits) if clean else 0,
        "anchor_projection": p.anchor_projection,
        **_metrics(p.behaviour),
    }


def _default_behaviour_reads(model, tokenizer, prompts: dict) -> torch.Tensor:
    """`[n, L, d]` as `default_behaviour` reads a run's store: the EM questions then the held-out
    persona questions, read as the EM recorder reads them, at every layer."""
    reads = [
        extract(model, tokenizer, p.conversations, layers=p.layers, read=p.read, progress=False).tensor
        for p in (prompts["em_questions"], prompts["persona_questions"])
    ]
    return torch.cat(reads).float()


def _curve(axis, em_run: Path, read_layer: int, suffix: str = "") -> dict:
    """The anchor projection at `read_layer` over an EM run's checkpoints, and its drift AUC.
    `suffix=".ablated"`: the reads the recorder took with the run's ablation on."""
    steps, values = [], []
    for c in checkpoints(em_run):
        steps.append(step_of(c))
        store = em_store(em_run)
        acts = torch.cat(
            [
                store.load(f"{c}/{name}{suffix}").tensor.float()
                for name in ("em_questions", "persona_questions")
            ]
        )
        values.append(float(axis.anchor(acts)[:, read_layer].mean()))
    return {"steps": steps, "anchor_projection": values, "drift_auc": drift.drift_auc(values, steps)}


def _metrics(metrics: dict) -> dict:
    keep = ("misaligned_rate", "mean_alignment", "mean_coherence", "mean_trait")
    return {k: metrics[k]["value"] for k in keep if k in metrics}


def plot_dose_response(sweeps: dict, layers: list[int], read_layer: int, path: Path) -> Path:
    panels = [
        ("clean_probe_probability", "persona probe P(persona) of the answers\n(clean pass, no hooks)"),
        ("anchor_projection", f"in-hook anchor projection at layer {read_layer}\n(0 = base, 1 = persona)"),
        ("mean_trait", "trait expression (judge, 0-100)"),
        ("misaligned_rate", "misaligned rate"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.8))
    for ax, (key, label) in zip(axes, panels):
        for name, points in sweeps.items():
            values = [p.get(key) for p in points]
            ax.plot(
                [p["alpha"] for p in points],
                [float("nan") if v is None else v for v in values],
                "o-",
                label=name,
            )
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="alpha (persona gaps added)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_title("diagnostic: partly the added vector itself", fontsize=9)
    fig.suptitle(f"Steering along the persona direction at layers {layers}: dose-response")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ablation(ablation: dict, read_layer: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, curve in ablation["curves"].items():
        ax.plot(
            curve["steps"],
            curve["anchor_projection"],
            "o-",
            label=f"{name}, clean read (drift AUC {curve['drift_auc']:.2f})",
        )
    for name, curve in ablation.get("read_with_ablation_on", {}).items():
        ax.plot(
            curve["steps"],
            curve["anchor_projection"],
            "s--",
            alpha=0.7,
            label=f"{name}, read with the ablation on (drift AUC {curve['drift_auc']:.2f})",
        )
    control = ablation.get("persona + ablation, no EM")
    if control is not None:
        ax.axhline(
            control["anchor_projection"], color="black", ls=":", label="control: persona + ablation, no EM"
        )
    ax.set(
        xlabel="EM fine-tuning step",
        ylabel=f"anchor projection at layer {read_layer} (0 = base, 1 = persona)",
    )
    ax.set_title(
        f"Does ablating the persona direction (layers {ablation['layers']}) remove the anchor?", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
