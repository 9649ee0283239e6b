"""Steering and ablation experiments on a finished main run, built from declared stages in the steer
folder (default `<run>/steer/`), so a rerun redoes only what its inputs changed:

    dose/persona/, dose/persona_em/   the dose-response of the persona model, before and after EM
                                      (points.json): alpha x persona direction added at the steering
                                      layers; the steered answers read CLEAN (no hooks) by the run's
                                      persona probe (the measure), the judge's behaviour metrics while
                                      steered, and the in-hook anchor projection at the read layer (a
                                      diagnostic: downstream of an added vector it partly reads the
                                      vector itself)
    em_ablated/em/                    the persona model EM fine-tuned again with the persona direction
                                      projected out of the residual stream (train.em's stage)
    ablation/                         its drift curve read clean and with the ablation on, beside the
                                      run's own persona + EM curve, and the control "persona + ablation,
                                      no EM" read the same way, so the ablation's own effect on the
                                      anchor read is separated from EM's (ablation.json)
    steer.json, dose_response.png, ablation.png   assembled from the stages on every call
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from analysis import drift
from analysis.drift_report import RUNS, anchor_axis
from analysis.em_eval import EvalConfig, evaluate
from analysis.experiments.options import TrackConfig
from analysis.experiments.track import held_out_questions, persona_run_dir, run_probe_sets
from analysis.experiments.track_stages import (
    em_source,
    judge_for,
    load_source,
    persona_source,
    release_models,
)
from analysis.plots import plt
from analysis.stats import across_seeds
from anchor.constitution import Persona, load_persona, persona_input
from anchor.em_questions import MAIN
from anchor.extract import extract
from anchor.generate import HFGenerator, SamplingConfig
from anchor.hooks import ablate
from anchor.runs import checkpoints, em_stage, em_store, load_em_model, step_of
from anchor.stages import FileInput, Inputs, Stage, StageOutput, run_stage
from anchor.store import atomic_write_json
from probes.contrast import load_contrast_set
from probes.directions import Directions
from probes.steering import DoseResponse, LinearReadout, check_read_layer, dose_response, steering_vectors
from train.em import em_probe_sets, finetune_em, read_run_config


@dataclass(frozen=True)
class SteerConfig:
    layers: tuple[int, ...] | None = None  # steering layers; None: the run's best layer
    read_layer: int | None = None  # in-hook anchor read; None: the last layer that is not steered
    probe_layer: int | None = None  # the persona probe scoring the answers; None: the run's best layer
    alphas: tuple[float, ...] = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)  # in persona gaps
    samples: int = 2  # answers per EM question while steered
    max_new_tokens: int = 48
    judge: str | None = None  # None: the run's
    ablation: bool = True
    seed: int = 0


SMOKE = dict(alphas=(-2.0, 0.0, 2.0), samples=1, max_new_tokens=8)
MODELS = {"persona": "persona model", "persona_em": "persona model after EM"}
MEASURE = "clean_probe_*: steered answers read with no hooks by the run's persona probe"


@dataclass(frozen=True)
class SteerPlan:
    """One run's steering experiment with every choice resolved."""

    run: Path
    out: Path
    track: TrackConfig
    persona: Persona
    layers: list[int]
    read_layer: int
    probe_layer: int
    judge: str
    config: SteerConfig


def plan_steer(run: Path, config: SteerConfig, out: Path) -> SteerPlan:
    """Resolve the layers and the judge from the run; a ValueError names what does not fit."""
    track = TrackConfig.load(run)
    directions = Directions.load(run / "analysis" / "directions.safetensors")
    best = json.loads((run / "analysis" / "summary.json").read_text())["best_layer"]
    layers = list(config.layers or [best])
    read_layer = config.read_layer
    if read_layer is None:
        read_layer = max((x for x in directions.layers if x not in layers), default=None)
    if read_layer is None:
        raise ValueError("every layer of the run's directions is steered; give --read-layer")
    check_read_layer(read_layer, layers)
    probe_layer = config.probe_layer if config.probe_layer is not None else best
    LinearReadout.from_directions(directions, probe_layer)  # a layer without a probe fails here
    persona = load_persona(track.persona)
    return SteerPlan(
        run, out, track, persona, layers, read_layer, probe_layer, config.judge or track.judge, config
    )


def shared_inputs(plan: SteerPlan) -> dict:
    """What every steering stage reads: the run's directions and anchor axis (its persona and base
    EM runs' step 0 and its contrast set), the persona, the layers and the evaluation settings."""
    run = plan.run
    return {
        "directions": FileInput(run / "analysis" / "directions.safetensors"),
        "persona_run": StageOutput(em_stage(run / RUNS["persona"])),
        "base_run": StageOutput(em_stage(run / RUNS["base"])),
        "contrast": StageOutput(run / "contrast"),
        "persona": persona_input(plan.track.persona),
        "probe_questions": plan.track.probe_questions,
        "layers": plan.layers,
        "read_layer": plan.read_layer,
        "probe_layer": plan.probe_layer,
        "judge": plan.judge,
        "evaluation": {
            "samples": plan.config.samples,
            "max_new_tokens": plan.config.max_new_tokens,
            "seed": plan.config.seed,
        },
    }


def steer_run(plan: SteerPlan, log=print) -> dict:
    """The dose-response of both models and, unless switched off, the ablation; returns steer.json."""
    shared = shared_inputs(plan)
    sources = {
        "persona": persona_source(persona_run_dir(plan.track, plan.run)),
        "persona_em": em_source(plan.run / RUNS["persona"]),
    }
    try:
        for key, source in sources.items():
            inputs = {**shared, "source": source, "alphas": list(plan.config.alphas)}
            run_stage(Stage(plan.out, f"dose/{key}", inputs, dose_stage), log)
        if plan.config.ablation:
            ablated = ablated_em_run(plan, log)
            inputs = {**shared, "ablated": StageOutput(ablated), "persona_model": sources["persona"]}
            run_stage(Stage(plan.out, "ablation", inputs, ablation_stage), log)
    finally:
        release_models()
    return write_outputs(plan)


def ablated_em_run(plan: SteerPlan, log) -> Path:
    """EM on the persona model again, with the run's recipe and probe sets and the persona direction
    projected out at the steering layers (a stage of the steer folder)."""
    persona_em = plan.run / RUNS["persona"]
    recipe = replace(
        read_run_config(persona_em),
        ablate_directions=str(plan.run / "analysis" / "directions.safetensors"),
        ablate_layers=tuple(plan.layers),
    )
    items = load_contrast_set(plan.run / "contrast" / "contrast.jsonl")
    probes = run_probe_sets(plan.track, plan.persona, items)
    finetune_em(recipe, plan.out / "em_ablated", probes, log=log, root=plan.out)
    return em_stage(plan.out / "em_ablated")


def _axis(inputs: Inputs):
    labels = torch.tensor([i.label for i in load_contrast_set(inputs.contrast / "contrast.jsonl")])
    return anchor_axis(inputs.persona_run.parent, inputs.base_run.parent, labels)


def _eval_config(inputs: Inputs) -> EvalConfig:
    e = inputs.evaluation
    return EvalConfig(samples=e["samples"], max_new_tokens=e["max_new_tokens"], seed=e["seed"], n_boot=500)


def _vectors(inputs: Inputs) -> tuple[Directions, dict[int, torch.Tensor]]:
    directions = Directions.load(inputs.directions)
    return directions, steering_vectors(directions.diff_in_means, directions.layers, inputs.layers)


def _prompts(inputs: Inputs) -> dict:
    """The reads `default_behaviour` takes from a run's store: the EM questions then the held-out
    persona questions."""
    persona = load_persona(inputs.persona["constitution"])
    return em_probe_sets(0, persona_questions=held_out_questions(persona), questions=inputs.probe_questions)


def dose_stage(inputs: Inputs, stage: Path) -> dict:
    """One model's dose-response (points.json)."""
    directions, vectors = _vectors(inputs)
    readout = LinearReadout.from_directions(directions, inputs.probe_layer)
    axis = _axis(inputs)
    read_layer = inputs.read_layer
    persona = load_persona(inputs.persona["constitution"])
    trait = "; ".join(t.trait for t in persona.traits[:3])
    prompts = _prompts(inputs)
    conversations = [*prompts["em_questions"].conversations, *prompts["persona_questions"].conversations]
    eval_config = _eval_config(inputs)
    judge = judge_for(inputs.judge)
    model, tokenizer = load_source(inputs.source)
    generator = HFGenerator(model, tokenizer, progress=False)
    sampling = SamplingConfig(
        max_new_tokens=eval_config.max_new_tokens, n=eval_config.samples, seed=eval_config.seed
    )
    points = dose_response(
        model,
        tokenizer,
        vectors,
        [float(a) for a in inputs.alphas],
        conversations,
        read_layer,
        axis.v_r[read_layer],
        float(axis.base[:, read_layer].mean()),
        float(axis.persona[:, read_layer].mean()),
        lambda: evaluate(generator, judge, MAIN, eval_config, trait=trait)[1],
        lambda batch: generator.generate(batch, sampling),
        readout,
    )
    rows = [_point(p) for p in points]
    atomic_write_json(stage / "points.json", rows)
    return {"alphas": len(rows)}


def ablation_stage(inputs: Inputs, stage: Path) -> dict:
    """The ablated EM run's drift read clean and with its ablation on, the run's own persona + EM
    curve, and the persona model with the direction ablated and no EM (ablation.json)."""
    _, vectors = _vectors(inputs)
    ablated = {layer: vectors[layer] for layer in inputs.layers}
    axis = _axis(inputs)
    read_layer = inputs.read_layer
    ablated_run = inputs.ablated.parent
    curves = {
        "persona + EM": _curve(axis, inputs.persona_run.parent, read_layer),
        "persona + EM, direction ablated": _curve(axis, ablated_run, read_layer),
    }
    with_ablation = _curve(axis, ablated_run, read_layer, suffix=".ablated")
    judge = judge_for(inputs.judge)
    eval_config = _eval_config(inputs)
    model, tokenizer = load_source(inputs.persona_model)
    prompts = _prompts(inputs)
    with ablate(model, ablated):
        reads = torch.cat(  # as `default_behaviour` reads a run's store: EM questions, then held-out ones
            [
                extract(
                    model, tokenizer, p.conversations, layers=p.layers, read=p.read, progress=False
                ).tensor
                for p in (prompts["em_questions"], prompts["persona_questions"])
            ]
        ).float()
        control_metrics = evaluate(HFGenerator(model, tokenizer, progress=False), judge, MAIN, eval_config)[1]
    release_models()
    control = {
        "anchor_projection": float(axis.anchor(reads)[:, read_layer].mean()),
        **_metrics(control_metrics),
    }
    model, tokenizer = load_em_model(ablated_run)
    with ablate(model, ablated):
        end_metrics = evaluate(HFGenerator(model, tokenizer, progress=False), judge, MAIN, eval_config)[1]
    del model
    result = {
        "layers": list(inputs.layers),
        "curves": curves,
        "read_with_ablation_on": {"persona + EM, direction ablated": with_ablation},
        "persona + ablation, no EM": control,
        "ablated_em_end": _metrics(end_metrics),
    }
    atomic_write_json(stage / "ablation.json", result)
    return {"control_anchor_projection": control["anchor_projection"]}


def write_outputs(plan: SteerPlan) -> dict:
    """steer.json and the plots, from the finished stages."""
    out = plan.out
    sweeps = {
        name: json.loads((out / "dose" / key / "points.json").read_text()) for key, name in MODELS.items()
    }
    ablation = None
    if plan.config.ablation:
        ablation = json.loads((out / "ablation" / "ablation.json").read_text())
    result = {
        "run": str(plan.run),
        "layers": plan.layers,
        "read_layer": plan.read_layer,
        "probe_layer": plan.probe_layer,
        "measure": MEASURE,
        "judge": plan.judge,
        "sweeps": sweeps,
        "ablation": ablation,
    }
    atomic_write_json(out / "steer.json", result)
    plots = [plot_dose_response(sweeps, plan.layers, plan.read_layer, out / "dose_response.png")]
    if ablation:
        plots.append(plot_ablation(ablation, plan.read_layer, out / "ablation.png"))
    return {**result, "plots": [str(p) for p in plots], "steer_json": str(out / "steer.json")}


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


def _curve(axis, em_run: Path, read_layer: int, suffix: str = "") -> dict:
    """The anchor projection at `read_layer` over an EM run's checkpoints, and its drift AUC.
    `suffix=".ablated"`: the reads the recorder took with the run's ablation on."""
    steps, values = [], []
    store = em_store(em_run)
    for c in checkpoints(em_run):
        steps.append(step_of(c))
        acts = torch.cat(
            [
                store.load(f"{c}/{name}{suffix}").tensor.float()
                for name in ("em_questions", "persona_questions")
            ]
        )
        values.append(float(axis.anchor(acts)[:, read_layer].mean()))
    auc = drift.drift_auc(values, steps)  # NaN (missing, null in JSON) below two checkpoints
    return {"steps": steps, "anchor_projection": values, "drift_auc": None if auc != auc else auc}


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
            label=f"{name}, clean read (drift AUC {_auc(curve)})",
        )
    for name, curve in ablation.get("read_with_ablation_on", {}).items():
        ax.plot(
            curve["steps"],
            curve["anchor_projection"],
            "s--",
            alpha=0.7,
            label=f"{name}, read with the ablation on (drift AUC {_auc(curve)})",
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


def _auc(curve: dict) -> str:
    return "n/a" if curve["drift_auc"] is None else f"{curve['drift_auc']:.2f}"
