"""The analysis stage of the main experiment: drift metrics with their nulls, headline numbers,
monitoring, plots, tables and the self-contained report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis import dashboard, matched_alarms, plots
from analysis.calibration import cannot_flag, describe
from analysis.contrast_quality import contrast_quality, contrast_table
from analysis.drift_report import (
    BARE,
    BASE,
    PERSONA,
    RUNS,
    anchor_axis,
    compute_drift,
    null_directions,
)
from analysis.experiments.track_stages import judged_misalignment_direction, read_likelihoods
from analysis.headline import NULL_HEADER, NULL_NOTE, RUN_NAMES, START_PAIRS, headline, null_lines, null_rows
from analysis.interaction import DESCRIPTIVE, interaction_rows, not_interpretable, pool_interaction
from analysis.likelihood_read import likelihood_read, scores_by_model
from analysis.monitor import judge_kind_of
from analysis.report import Table, write_report
from analysis.stats import bounds, estimate
from anchor.runs import checkpoints, em_store
from anchor.stages import Inputs, read_done
from anchor.store import atomic_write_json, read_jsonl
from probes.contrast import ContrastItem, load_contrast_set
from probes.directions import DirectionStack, fit_directions

if TYPE_CHECKING:
    from analysis.experiments.options import TrackConfig


START_OF = {run: start for start, runs in START_PAIRS.items() for run in runs}  # each run's starting model


def persona_start_of(persona: Path | dict) -> tuple[str, str]:
    """(model, adapter) of the persona model the analysis declared: the persona run's SFT stage
    (DPO-merged weights, SFT adapter on top), or a published adapter on the base model."""
    if isinstance(persona, dict):
        return persona["model"], persona["adapter"]
    return str(persona.parent / "dpo" / "merged"), str(persona / "adapter")


def write_analysis(inputs: Inputs, stage: Path) -> dict:
    """The analysis stage's body: it reads the stages it declares (the EM runs, the evaluations,
    the contrast and misalignment stages, the persona run) under the run folder."""
    from analysis.experiments.options import TrackConfig

    intermediate = {r: {int(k): v for k, v in steps.items()} for r, steps in inputs.intermediate.items()}
    return analyse(
        TrackConfig(**inputs.config),
        Path(inputs.root),
        stage,
        load_contrast_set(inputs.contrast / "contrast.jsonl"),
        persona_start_of(inputs.persona),
        read_done(inputs.contrast_pairs),
        inputs.judge_calibration,
        intermediate,
        list(inputs.evaluations.values()),
        {name: read_likelihoods(folder) for name, folder in inputs.likelihoods.items()},
    )


def judged_direction(
    config: TrackConfig, evaluations: list[Path], judge_calibration: dict | None
) -> tuple[torch.Tensor | None, dict]:
    """The misalignment direction from the judge's split of the evaluations' answers, and what
    became of it. The split is the judge's alignment scores: a judge whose calibration shows it
    cannot flag cannot split them either, so the direction is not measurable (and is never read)."""
    unflaggable = cannot_flag(judge_calibration)
    if unflaggable:
        return None, {"value": None, "reason": f"not measurable with {config.judge}: {unflaggable}"}
    judged = judged_misalignment_direction(config.model, evaluations)
    if judged is None:
        return None, {"value": None, "reason": "fewer than two answers on a side of the judge's split"}
    return judged, {"value": "measured", "reason": None}


def analyse(
    config: TrackConfig,
    out: Path,
    stage: Path,
    items: list[ContrastItem],
    persona_start: tuple[str, str],
    pairs_done: dict,
    judge_calibration: dict | None = None,
    intermediate: dict[str, dict[int, str]] | None = None,
    evaluations: list[Path] | None = None,
    likelihoods: dict[str, list[dict]] | None = None,
) -> dict:
    labels = torch.tensor([i.label for i in items])
    runs = {name: out / folder for name, folder in RUNS.items()}
    misalignment = DirectionStack.load(out / "misalignment" / "direction.safetensors")
    judged, judged_status = judged_direction(config, evaluations or [], judge_calibration)
    result = compute_drift(
        runs,
        labels,
        [(i.question, i.pair) for i in items],
        questions=[i.question for i in items],
        misalignment=misalignment.vectors,
        judged_misalignment=judged,
        axis_run=config.axis,
        seed=config.seed,
    )
    layer = result["best_layer"]
    misalignment.save(stage / "misalignment_direction.safetensors")

    # Directions at the reference (the persona model before EM, read without the system prompt),
    # for steering and probe judges; they record the model and adapters they were read from.
    reference = out / RUNS[PERSONA]
    contrast_r = em_store(reference).load(f"{checkpoints(reference)[0]}/{BARE}")
    directions = fit_directions(
        contrast_r.tensor,
        labels,
        groups=[i.question for i in items],
        layers=contrast_r.layers,
        seed=config.seed,
        meta={
            "persona": config.persona,
            # read from the persona model (DPO merged with the SFT adapter on top, or a published
            # adapter on the base model), never its base model alone
            "model": persona_start[0],
            "adapter": persona_start[1],
            "base_model": config.model,
            "checkpoint": "persona model before EM",
            "read": "contrast responses without their system prompt, response-averaged",
        },
    )
    directions.save(stage / "directions.safetensors")
    contrast_done = json.loads((out / "contrast" / "done.json").read_text())
    quality = contrast_quality(
        directions, pairs_done, len(items), len({i.question for i in items}), layer, contrast_done
    )

    behaviour = {}
    for name in ("base", "persona", *(f"{n}_end" for n in RUNS)):
        behaviour[name] = json.loads((out / "eval" / name / "summary.json").read_text())["metrics"]
    head = headline(result, behaviour)
    likelihood = likelihood_reads(likelihoods or {}, config.seed)
    runs_result = result["runs"]
    monitoring = _monitoring(
        config, out, runs, result, directions, misalignment, behaviour, intermediate, labels
    )

    def anchor(run: str, end: bool) -> float:
        return runs_result[run]["anchor_projection"][-1 if end else 0][layer]

    points = []
    for run in RUNS:
        start = START_OF[run]
        points += [
            {"run": run, "label": start, "anchor_projection": anchor(run, False), **_rate(behaviour[start])},
            {
                "run": run,
                "label": f"{run} + EM end",
                "anchor_projection": anchor(run, True),
                **_rate(behaviour[f"{run}_end"]),
            },
        ]
    plot_dir = stage / "plots"
    title = f"'{config.persona}' on {config.model}: EM on {config.em_dataset}"
    trajectories = {
        name: torch.stack(
            [
                em_store(run).load(f"{c}/em_questions").tensor[:, layer].double().mean(0)
                for c in runs_result[name]["checkpoints"]
            ]
        )
        for name, run in runs.items()
    }
    v_r = directions.diff_in_means[directions.layers.index(layer)]  # the persona direction at r
    images = [
        ("Drift curves", plots.drift_curves(result, plot_dir / "drift_curves.png", title)),
        ("Layer profile", plots.layer_profile(result, plot_dir / "layer_profile.png", title)),
        (
            "Movement along the misalignment direction",
            plots.misalignment_movement(result, plot_dir / "misalignment_movement.png", title),
        ),
        ("Direction stability by layer", plots.stability_heatmap(result, plot_dir / "stability_heatmap.png")),
        ("PCA trajectory", plots.pca_trajectory(trajectories, v_r, layer, plot_dir / "pca_trajectory.png")),
        (
            "Behaviour vs representation",
            plots.behaviour_vs_representation(points, plot_dir / "behaviour_vs_representation.png"),
        ),
        ("Monitoring timeline", dashboard.timeline(monitoring, plot_dir / "monitoring_timeline.png", title)),
    ]
    table = drift_table(result, behaviour)
    judge_note = describe(config.judge, judge_calibration)
    interaction = one_seed_interaction(result, quality)
    nulls_grouped = null_rows(result["nulls"])
    sentences = null_lines(nulls_grouped)
    metrics = {
        "seed": config.seed,
        "interaction": interaction,
        "headline": head,
        "nulls": result["nulls"],
        "null_summary": sentences,
        "drift": result,
        "behaviour": behaviour,
        "points": points,
        "table": table,
        "contrast_pairs": quality,
        "contrast": contrast_done,
        "misalignment_direction": misalignment.meta,
        "judged_misalignment_direction": judged_status,
        "likelihood_read": likelihood,
        "monitoring": monitoring,
    }
    metrics["judge"] = {"spec": config.judge, "calibration": judge_calibration, "note": judge_note}
    atomic_write_json(stage / "metrics.json", metrics)
    write_report(
        stage / "report.html",
        f"Identity anchor: {title}",
        f"Anchor projection is measured at layer {layer}, chosen on one half of the default-behaviour "
        "prompts (where character training moved default behaviour furthest along the persona direction) "
        f"and reported on the other half. The persona direction is read from {_answers_note(contrast_done)}, "
        f"without their system prompts. {_filter_note(metrics['contrast'])} One seed ({config.seed}): "
        f"every number is {DESCRIPTIVE.format(n=1)}. {judge_note} {evaluation_size(config, behaviour)}"
        + (
            f" The misalignment direction from the judge's split of the answers: {judged_status['reason']}."
            if judged_status["value"] is None
            else ""
        ),
        [
            interaction_table(interaction),
            contrast_table(quality),
            Table("Drift table", TABLE_HEADER, [[r[k] for k in TABLE_KEYS] for r in table], judge_note),
            headline_table(head),
            likelihood_table(likelihood),
            Table(
                f"Nulls at layer {layer}: the control run first, random nulls second",
                NULL_HEADER,
                nulls_grouped,
                NULL_NOTE,
            ),
            Table("Monitoring", ["finding"], [[line] for line in monitoring["sentences"]]),
            *_family_tables(out, config),
        ],
        images,
        asdict(config),
    )
    summary = {
        "table": table,
        "headline": head,
        "null_summary": sentences,
        "monitoring": monitoring["sentences"],
        "simple_effects": result["simple_effects"],
        "interaction": interaction,
        "likelihood_read": likelihood,
        "best_layer": layer,
        "report": str(out / "report.html"),  # the job publishes the stage's copy there
        "plots": [str(p) for _, p in images],
        "metrics": str(stage / "metrics.json"),
        "contrast_pairs": quality,
    }
    atomic_write_json(stage / "summary.json", summary)
    return {"best_layer": layer}


def likelihood_reads(likelihoods: dict[str, list[dict]], seed: int) -> dict:
    """The judge-free read of every evaluated model against the model it started from (the persona
    model against the base model: what character training itself did), from the likelihood stages'
    rows (the same reference answers, in the same order, under every model)."""
    if not likelihoods:
        return {}
    score = scores_by_model(likelihoods)
    starts = {
        "persona": "base",
        **{f"{r}_end": START_OF[r] for r in RUNS},
    }
    return {
        name: {
            **likelihood_read(score[start], score[name], likelihoods[name], seed=seed),
            "against": start,
        }
        for name, start in starts.items()
        if name in likelihoods and start in likelihoods
    }


def likelihood_table(likelihood: dict) -> Table:
    rows = []
    for name, number in likelihood.items():
        low, high = bounds(number)
        shown = "n/a" if number["value"] is None else f"{number['value']:+.4f}"
        interval = number.get("reason") if number["value"] is None else f"[{_fmt(low)}, {_fmt(high)}]"
        rows.append([READ_NAMES.get(name, name), number["against"], shown, interval, number["n"]])
    return Table(
        "Judge-free behavioural read: log-likelihood of misaligned minus aligned reference answers",
        ["model", "against", "change (nats/token)", "95% interval", "questions"],
        rows,
        "Per question, the change in mean per-token log-likelihood of the project's answers labelled misaligned "
        "minus that of its answers labelled aligned, from the starting model to this one; averaged over questions, "
        "bootstrapped over questions. Positive: misaligned answers became relatively more likely. No sampling, no "
        "judge. One seed: descriptive.",
    )


READ_NAMES = {"persona": "persona model", **{f"{r}_end": f"{RUN_NAMES[r]} (end)" for r in RUN_NAMES}}


def evaluation_size(config: TrackConfig, behaviour: dict) -> str:
    """How many answers each misaligned rate rests on, and the smallest rate they can tell from 0."""
    answers = max((m.get("answers") or 0) for m in behaviour.values())
    if not answers:
        return "No answers were judged."
    return (
        f"Each evaluated model gave {answers} answers ({config.eval_samples} per question, at most "
        f"{config.eval_max_new_tokens} new tokens); with none flagged, any rate below about {3 / answers:.3f} "
        "(3 / answers, 95%, ignoring clustering by question) is consistent with what was seen, so smaller "
        "misaligned rates cannot be told from 0."
    )


def one_seed_interaction(result: dict, quality: dict) -> dict:
    """The run's interaction along each direction, as one seed pools (n = 1, descriptive), at the
    run's layer; along the persona direction, not interpretable where the contrast probe is at
    chance there (the direction may be noise)."""
    if "interaction" not in result:
        return {}
    out = {}
    for direction, terms in result["interaction"].items():
        pooled = pool_interaction([terms], result["best_layer"], direction)
        pooled["interaction"] = {
            **terms["interaction"],
            **pooled["interaction"],
            "ci95": terms["interaction"]["ci95"],
        }
        out[direction] = pooled
    at_chance = (
        f"the contrast probe's held-out accuracy at layer {quality['layer']} is "
        f"{quality['held_out_accuracy']:.2f} on about {quality['held_out_answers']} answers, at chance "
        f"(a coin reaches {min(quality['chance_ceiling'], 1.0):.2f})"
    )
    return not_interpretable(out, at_chance if quality["warning"] else None)


def interaction_table(pooled: dict) -> Table:
    return Table(
        "The question: does the persona resist EM beyond what any fine-tuning does?",
        [
            "direction",
            "layer",
            "interaction",
            "95% interval",
            "n (seeds)",
            "per seed",
            "minimum detectable",
            "what may be said",
        ],
        interaction_rows(pooled),
        note="interaction = (persona + EM - persona + control) - (base + EM - base + control): each term the "
        "movement of default behaviour along the direction by the end of fine-tuning, in units of the "
        "starting models' spread. The anchor hypothesis predicts > 0 along the persona direction and < 0 "
        "along the misalignment direction."
        if pooled
        else "This run has no 2x2 (the base model on control data is missing): no interaction.",
    )


def _monitoring(
    config: TrackConfig,
    out: Path,
    runs: dict[str, Path],
    result: dict,
    directions,
    misalignment: DirectionStack,
    behaviour: dict,
    intermediate: dict[str, dict[int, str]] | None,
    labels: torch.Tensor,
) -> dict:
    """Alarms, phase transitions and (with `monitor`) the lead time, at the chosen layer on the
    report half of the prompts; the assistant axis joins the frozen directions when it was read."""
    frozen = {"persona": directions.diff_in_means, "misalignment": misalignment.vectors}
    axis_path = out / "assistant_axis" / "axis.safetensors"
    extra: dict = {}
    if config.monitor and axis_path.is_file():
        axis = DirectionStack.load(axis_path)
        frozen["assistant"] = axis.vectors
        extra["assistant_axis"] = {
            "method": axis.meta.get("method"),
            "cosine_with_persona_by_layer": torch.nn.functional.cosine_similarity(
                axis.vectors.double(), directions.diff_in_means.double(), dim=-1
            ).tolist(),
        }
    by_step = None
    if config.monitor:
        by_step = {}
        for run in RUNS:
            start = START_OF[run]
            steps = result["runs"][run]["steps"]
            rates = {
                0: behaviour[start]["misaligned_rate"],
                steps[-1]: behaviour[f"{run}_end"]["misaligned_rate"],
            }
            for step, name in (intermediate or {}).get(run, {}).items():
                summary = json.loads((out / "eval" / name / "summary.json").read_text())
                rates[step] = summary["metrics"]["misaligned_rate"]
            by_step[run] = {
                k: estimate(v["value"], v["ci95"], v["n"], v.get("reason")) for k, v in sorted(rates.items())
            }
    layer = result["best_layer"]
    axis_ = anchor_axis(runs[PERSONA], runs[BASE], labels, BARE, runs[config.axis])
    # the persona figures' null: random directions of the persona direction's spread
    null = null_directions(axis_, runs[PERSONA], layer, {"persona": axis_.v_r[layer]}, 200, config.seed)[
        "persona"
    ]
    monitoring = dashboard.monitor_runs(
        runs,
        layer,
        result["layer_selection"]["report_prompts"],
        frozen,
        by_step,
        config.judge,
        config.seed,
        null,
    )
    monitoring.update(extra)
    probe = judge_kind_of(config.judge) == "probe"
    monitoring["matched"] = _matched(
        out, runs, result, misalignment, behaviour, intermediate, config.seed, probe
    )
    monitoring["sentences"] = dashboard.sentences(monitoring) + [
        f"{RUN_NAMES[run]} against {RUN_NAMES[CONTROL_OF[run]]}: {m['lead_time']['words']}"
        for run, m in monitoring["matched"].items()
    ]
    if "assistant_axis" in extra:
        cos = extra["assistant_axis"]["cosine_with_persona_by_layer"][layer]
        monitoring["sentences"].append(
            f"assistant axis (a variant of Lu et al. 2026): cosine with the persona direction {cos:.3f} at layer {layer}."
        )
    return monitoring


CONTROL_OF = dict(START_PAIRS.values())  # each EM run -> its control run (same start and recipe)


def _matched(
    out: Path,
    runs: dict[str, Path],
    result: dict,
    misalignment: DirectionStack,
    behaviour: dict,
    intermediate: dict[str, dict[int, str]] | None,
    seed: int,
    probe_judge: bool,
) -> dict:
    """Each EM run's matched alarms against its control run (`analysis.matched_alarms`): the shift
    along the misalignment direction on the report prompts and the judged misaligned rate per
    question, at the checkpoints where both were read for both runs."""
    layer = result["best_layer"]
    rows = torch.tensor(result["layer_selection"]["report_prompts"])
    matched = {}
    for run, control in CONTROL_OF.items():
        representation = matched_alarms.representation_signal(
            runs[run], runs[control], layer, rows, misalignment.vectors[layer]
        )
        start = START_OF[run]
        rate = behaviour[start]["misaligned_rate"]
        signal, missing = None, None
        if rate.get("value") is None:
            missing = f"the misaligned rate is not measured: {rate.get('reason')}"
        else:
            em_rows, control_rows = (
                _evaluated_rows(out, result, intermediate, r, start) for r in (run, control)
            )
            signal = matched_alarms.behaviour_signal(em_rows, control_rows, behaviour[start]["thresholds"])
        matched[run] = matched_alarms.matched_alarms(
            representation, signal, missing, seed=seed, probe_judge=probe_judge
        )
    return matched


def _evaluated_rows(
    out: Path, result: dict, intermediate: dict[str, dict[int, str]] | None, run: str, start: str
) -> dict[int, list[dict]]:
    """A run's judged answers by step: its start's evaluation at 0, its own at the end and at the
    intermediate checkpoints that were evaluated."""
    steps = result["runs"][run]["steps"]
    names = {0: start, steps[-1]: f"{run}_end", **(intermediate or {}).get(run, {})}
    return {
        step: [r for _, r in read_jsonl(out / "eval" / e / "responses.jsonl")] for step, e in names.items()
    }


def _family_tables(out: Path, config: TrackConfig) -> list[Table]:
    """Misaligned rate per question family of the end-of-EM evaluations (triggered variants)."""
    if not config.monitor:
        return []
    rows = []
    for run in RUNS:
        summary = json.loads((out / "eval" / f"{run}_end" / "summary.json").read_text())
        for family, metrics in summary.get("by_family", {}).items():
            rate = metrics["misaligned_rate"]
            gap = summary["family_gap"].get(family, {})
            low, high = bounds(rate)
            rows.append([RUN_NAMES[run], family, rate["value"], f"[{_fmt(low)}, {_fmt(high)}]", gap.get("value"),
                         rate["n"]])  # fmt: skip
    return [
        Table(
            "Triggered evaluations: misaligned rate by question family at the end of EM",
            ["run", "family", "misaligned rate", "ci95", "minus plain", "answers"],
            rows,
            "Families resembling the training context (code, JSON, template, the dataset's domain); a rate above "
            "the plain questions' would be conditional misalignment.",
        )
    ]


def _answers_note(contrast_done: dict) -> str:
    """Where the contrast answers came from, in the report's opening paragraph."""
    answers, source = contrast_done.get("answers", "sampled"), contrast_done.get("source")
    if answers == "written":
        return (
            f"answers written for the persona ({source}: the same questions answered showing the trait and "
            "showing its opposite, matched in length; the default model barely follows the eliciting prompts, "
            "so its own answers give a direction at chance)"
        )
    if answers == "given":
        return f"the given contrast set ({source})"
    return f"answers sampled from {source or 'the model'} under the eliciting and suppressing prompts"


def _filter_note(contrast_done: dict) -> str:
    kept = contrast_done.get("filter")
    if kept is None:
        return (
            "The contrast set is not filtered by a judge (Persona Vectors' filter needs a real judge: "
            "--filter-contrast on)."
        )
    return (
        f"The contrast set is filtered by {kept['judge']} (Persona Vectors' rule): {kept['kept_pairs']} of "
        f"{kept['pairs']} pairs kept; dropped answers: {kept['dropped_items'] or 'none'}."
    )


def _rate(metrics: dict) -> dict:
    """The misaligned rate as the plots take it: a missing rate (no scored answers) stays NaN."""
    m = metrics["misaligned_rate"]
    nan = float("nan")
    value = m["value"] if m["value"] is not None else nan
    low, high = (x if x is not None else nan for x in bounds(m))
    return {"misaligned_rate": value, "ci95": [low, high]}


TABLE_KEYS = [
    "model",
    "anchor_before",
    "anchor_after",
    "drift_auc_signed",
    "drift_auc",
    "stability_end",
    "stability_end_with_system",
    "probe_transfer_end",
    "misaligned_before",
    "misaligned_after",
]
TABLE_HEADER = [
    "model",
    "anchor before",
    "anchor after",
    "drift AUC (signed)",
    "drift AUC (abs)",
    "stability",
    "stability w/ sys",
    "probe held-out",
    "misaligned before",
    "misaligned after",
]


def drift_table(result: dict, behaviour: dict) -> list[dict]:
    """One row per EM run at the chosen layer; a rate with no scored answers is None (missing),
    never 0."""
    layer = result["best_layer"]
    rows = []
    for run, data in result["runs"].items():
        start = START_OF[run]

        def rate(name: str) -> float | None:
            value = behaviour[name]["misaligned_rate"]["value"]
            return None if value is None or value != value else value

        rows.append(
            {
                "model": RUN_NAMES[run],
                "anchor_before": data["anchor_projection"][0][layer],
                "anchor_after": data["anchor_projection"][-1][layer],
                "drift_auc_signed": data["drift_auc_signed"],
                "drift_auc": data["drift_auc"],
                "stability_end": data["direction_stability"][-1][layer],
                "stability_end_with_system": data["direction_stability_with_system"][-1][layer],
                "probe_transfer_end": data["probe_transfer"][-1][layer],
                "misaligned_before": rate(start),
                "misaligned_after": rate(f"{run}_end"),
            }
        )
    return rows


def headline_table(head: dict) -> Table:
    """The headline numbers with their intervals, one row each."""
    rows = []
    for key, per in head.items():
        for name, number in (per or {}).items():
            if number is None or number.get("value") is None:
                reason = (number or {}).get("reason", "not available")
                rows.append([key, name, "n/a", reason, (number or {}).get("n", "")])
                continue
            low, high = bounds(number)
            n = number["n"]
            if number.get("missing_seeds"):  # said, never dropped silently
                n = f"{n} ({number['missing_seeds']} seed(s) without a value)"
            rows.append([key, name, number["value"], f"[{_fmt(low)}, {_fmt(high)}]", n])
    return Table(
        "Simple effects and per-run numbers (95% intervals; descriptive with fewer than 3 seeds)",
        ["number", "model / run", "value", "ci95", "n"],
        rows,
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"
