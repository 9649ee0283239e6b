"""The main experiment over several seeds: each seed a full run, every headline number pooled
(mean and t-interval over seeds), the nulls seed by seed, and the drift detector fitted on one
seed and tested on the others."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from analysis import dashboard
from analysis.calibration import describe
from analysis.drift_report import RUNS
from analysis.experiments.options import Resources, TrackConfig
from analysis.experiments.seeds import SeedPlan, run_seeds
from analysis.experiments.track import track_drift
from analysis.experiments.track_report import _fmt, headline_table, interaction_table
from analysis.headline import NULL_HEADER, NULL_NOTE, RUN_NAMES, null_lines, null_rows, pool_seeds
from analysis.interaction import (
    DESCRIPTIVE,
    MIN_SEEDS_FOR_VERDICT,
    not_interpretable,
    pool_interaction,
    pooled_layer,
)
from analysis.matched_alarms import pool_matched
from analysis.monitor import drift_detector
from analysis.report import Table, write_report
from analysis.stats import unmeasured
from anchor.store import atomic_write_json
from probes.directions import Directions, DirectionStack


def _detector(seeds: list[int], runs: list[Path], per_seed: list[dict]) -> dict:
    """The drift detector across seeds: each seed's runs at its own chosen layer (the features are
    unit-free shifts), fitted on the first seed, tested on the others."""
    series = []
    for seed, run, metrics in zip(seeds, runs, per_seed, strict=True):
        directions = Directions.load(run / "analysis" / "directions.safetensors")
        misalignment = DirectionStack.load(run / "analysis" / "misalignment_direction.safetensors")
        frozen = {"persona": directions.diff_in_means, "misalignment": misalignment.vectors}
        series += dashboard.detector_series(
            {name: run / folder for name, folder in RUNS.items()},
            seed,
            metrics["drift"]["best_layer"],
            metrics["drift"]["layer_selection"]["report_prompts"],
            frozen,
        )
    try:
        return drift_detector(series, train_seeds=seeds[:1], test_seeds=seeds[1:], seed=seeds[0])
    except ValueError as err:
        return unmeasured(0, str(err))


def pooled_interaction(per_seed: list[dict]) -> dict:
    """Each direction's interaction across seeds at one layer, chosen on the seeds' pooled selection
    halves; along the persona direction, not interpretable when any seed's contrast probe is at chance."""
    with_2x2 = [m for m in per_seed if m["drift"].get("interaction")]
    if len(with_2x2) < len(per_seed) or not per_seed:
        return {}
    layer = pooled_layer([m["drift"]["layer_selection"]["separation_selection"] for m in per_seed])
    out = {
        direction: pool_interaction(
            [m["drift"]["interaction"][direction] for m in per_seed], layer, direction
        )
        for direction in per_seed[0]["drift"]["interaction"]
    }
    at_chance = [m["seed"] for m in per_seed if m["contrast_pairs"]["warning"]]
    return not_interpretable(
        out, f"the contrast probe is at chance in seeds {at_chance}" if at_chance else None
    )


def interaction_layer_note(interaction: dict) -> str:
    layers = {result["layer"] for result in interaction.values()}
    return f"layer {layers.pop()}, chosen on the seeds' pooled selection halves" if layers else "no 2x2"


def track_seeds(
    config: TrackConfig,
    plan: SeedPlan,
    log=print,
    resources: Resources | None = None,
    judge_calibration: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """The whole experiment once per seed (each a resumable run of `plan.runs`), then every headline
    number pooled across seeds in `<plan.pooled>/analysis/metrics.json`: the mean with a t-interval
    over seeds, n = the seeds."""
    seeds, runs, out = list(plan.seeds), list(plan.runs), plan.pooled
    summaries = run_seeds(
        config,
        plan,
        lambda seeded, run: track_drift(
            seeded, run, log, resources or Resources(), judge_calibration, overwrite
        ),
        log,
    )
    per_seed = [json.loads((run / "analysis" / "metrics.json").read_text()) for run in runs]
    pooled = pool_seeds(per_seed)
    layers = [m["drift"]["best_layer"] for m in per_seed]
    nulls_grouped = null_rows(pooled["nulls"])
    sentences = null_lines(nulls_grouped)
    detector = _detector(seeds, runs, per_seed)
    detector_words = (
        f"EM-vs-control drift detector (fitted on seed {detector['train_seeds']}, tested on {detector['test_seeds']}): "
        f"held-out AUROC {_fmt(detector['value'])} [{_fmt(detector['ci95'][0])}, {_fmt(detector['ci95'][1])}] "
        f"over {detector['n']} test checkpoints."
        if detector.get("value") is not None
        else f"EM-vs-control drift detector: not computable ({detector['reason']})."
    )
    sentences.append(detector_words)
    matched = {
        run: pool_matched([m["monitoring"]["matched"][run] for m in per_seed])
        for run in per_seed[0]["monitoring"].get("matched", {})
    }
    matched_words = [
        f"{RUN_NAMES[run]} against its control: {m['lead_time']['words']}" for run, m in matched.items()
    ]
    sentences += matched_words
    judge_note = describe(config.judge, judge_calibration)
    interaction = pooled_interaction(per_seed)
    metrics = {
        "interaction": interaction,
        **pooled,
        "detector": detector,
        "matched_alarms": matched,
        "runs": [str(r) for r in runs],
        "best_layer_by_seed": layers,
        "null_summary": sentences,
        "per_seed_headline": {str(m["seed"]): m["headline"] for m in per_seed},
        "judge": {"spec": config.judge, "calibration": judge_calibration, "note": judge_note},
    }
    atomic_write_json(out / "analysis" / "metrics.json", metrics)
    title = f"'{config.persona}' on {config.model}: EM on {config.em_dataset}, seeds {seeds}"
    report = write_report(
        out / "report.html",
        f"Identity anchor: {title}",
        f"Each number is the mean over {len(seeds)} seeds with a Student-t 95% interval over the seeds. "
        f"The interaction is read at one layer for every seed ({interaction_layer_note(interaction)}); the "
        f"other numbers at each seed's own chosen layer ({layers}). Every seed reran character training, "
        f"the contrast set, EM and the evaluation. "
        + (
            ""
            if len(seeds) >= MIN_SEEDS_FOR_VERDICT
            else f"Every number is {DESCRIPTIVE.format(n=len(seeds))}. "
        )
        + judge_note,
        [
            interaction_table(interaction),
            headline_table(pooled["headline"]),
            Table(
                f"Nulls, seed by seed (each seed at its own layer: {layers})",
                NULL_HEADER,
                nulls_grouped,
                NULL_NOTE,
            ),
            Table("EM-vs-control drift detector", ["finding"], [[detector_words]]),
            Table(
                "Matched alarms across seeds (EM minus control, seeds as the unit)",
                ["finding"],
                [[w] for w in matched_words],
            ),
        ],
        [],
        {**asdict(config), "seeds": seeds, "runs": [str(r) for r in runs]},
    )
    return {
        "interaction": interaction,
        "headline": pooled["headline"],
        "null_summary": sentences,
        "metrics": str(out / "analysis" / "metrics.json"),
        "report": str(report),
        "runs": [str(r) for r in runs],
        "ran": [stage for s in summaries for stage in s["ran"]],
    }
