"""Defences side by side: character training against the other ways to resist EM, on one harness.

The main experiment (`analysis.experiments.track.track_drift`) runs first, or is reused when complete: its
base + EM, persona + EM and persona + secure runs are the arms `none`, `persona` and `secure`.
Every other arm is an EM run on the same corrupted rows, seed, steps and checkpoints (interleaving's
added rows are extra, so it trains about 10% longer), read on the same probe sets, from the base
model (`X`) or the character-trained one (`persona+X`), with one in-training defence
(`train.defences`); capping at evaluation (The Assistant Axis's inference-time method) trains
nothing: it is the undefended run from that start read and sampled with the caps on. Then each
arm's behaviour (the run's judge; triggered variants when asked), its cost (coherence and the
log-likelihood of held-out ordinary answers, against its own starting model) and the drift metrics
of the main job with their nulls, compared with `none` and `persona`, the primary contrasts
corrected for multiple comparisons (`analysis.experiments.defence_report`).

Run directory (the main experiment's, so its runs are reused):
    ...                              the main experiment (analysis/experiments/track.py layout)
    assistant_axis/                  the assistant axis (capping arms), shared with --monitor runs
    defences/benign/<start>/         generic prompts answered by the starting model ("base", "persona")
    defences/reflections/<start>/    its self-assessments from the constitution
    defences/caps/<start>/           the capping floors on the assistant axis, from the starting model
    defences/arms/<arm>/             EM runs (train/em.py layout); an evaluation-time arm's holds the
                                     undefended run's checkpoints read again with its defence on
    defences/eval/<arm>/             behaviour at the end of EM (<arm>+capped: the training-time
                                     capping variant with its caps on)
    defences/capability/<model>/     log-likelihood of the held-out ordinary answers
    defences/analysis/               defences.json, defences.png, report.html
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from analysis.calibration import DEFAULT_LABELS
from analysis.capability import ORDINARY_ANSWERS_FILE
from analysis.experiments.defence_arms import (
    MAIN_RUNS,
    REUSED,
    ArmFiles,
    DefenceSettings,
    band,
    build_defence,
    defence_of,
    is_evaluation_time,
    needs,
    start_of,
    undefended_arm,
)
from analysis.experiments.defence_report import analyse_defences
from analysis.experiments.defence_stages import (
    read_capped_run,
    write_benign_rows,
    write_capability,
    write_caps,
    write_reflections,
)
from analysis.experiments.inputs import check_track_inputs
from analysis.experiments.options import Resources, TrackConfig
from analysis.experiments.seeds import SeedPlan, run_seeds
from analysis.experiments.track import (
    add_timings,
    assistant_axis_inputs,
    em_run_config,
    evaluation_inputs,
    finetune_from_start,
    persona_model,
    persona_run_dir,
    run_probe_sets,
    track_drift,
)
from analysis.experiments.track_stages import (
    base_source,
    em_source,
    evaluate_model,
    release_models,
    write_assistant_axis,
    write_likelihoods,
)
from anchor import timings
from anchor.constitution import Persona, persona_input
from anchor.models import model_depth
from anchor.prompt_pool import GENERIC_PROMPTS_FILE
from anchor.published import resolve_published
from anchor.runlock import run_lock
from anchor.runs import em_stage, read_em_run
from anchor.stages import Content, FileInput, Inputs, Stage, StageOutput, is_complete, run_stage
from probes.contrast import load_contrast_set
from train import tracking
from train.defences import inoculation_prompt
from train.em import probe_key, start_reads_stage


@dataclass(frozen=True)
class DefencesConfig:
    track: TrackConfig
    arms: tuple[str, ...]
    settings: DefenceSettings = field(default_factory=DefenceSettings)
    triggered: bool = False  # evaluate arms on the triggered question variants too


def run_defences(
    config: DefencesConfig,
    out: str | Path,
    log=print,
    resources: Resources = Resources(),  # noqa: B008 (frozen, as track_drift's)
    judge_calibration: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Every arm, resumable arm by arm; returns the analysis summary (`defences.json`'s path,
    the table, the sentences)."""
    out = Path(out)
    for arm in config.arms:
        defence_of(arm)  # unknown arms fail before anything runs
    track = config.track
    if any(defence_of(a) == "inoculation" for a in config.arms):  # no prompt for the dataset: fail now
        inoculation_prompt(track.em_dataset, config.settings.inoculation_prompt)
    persona = check_track_inputs(track, out)  # every input, before the folder (and its lock) exists
    with run_lock(out), timings.recording() as recorder, tracking.reporting(resources.report_to, out):
        result = _run_defences(config, out, persona, log, resources, judge_calibration, overwrite)
        if "defences/analysis" in result["ran"]:  # this call produced the analysis: its timings go with it
            analysis = out / "defences" / "analysis"
            result["time"] = add_timings(
                analysis / "defences.json", [analysis / "report.html"], recorder.rows(), log
            )
        return result


def _run_defences(
    config: DefencesConfig,
    out: Path,
    persona: Persona,
    log,
    resources: Resources,
    judge_calibration: dict | None,
    overwrite: bool,
) -> dict:
    track = config.track
    ran: list[str] = []

    def tracked(message: str) -> None:
        log(message)
        if message.endswith(": running"):
            ran.append(message.removeprefix("stage ").removesuffix(": running"))

    def run(name: str, inputs: dict, body) -> dict:
        return run_stage(Stage(out, name, inputs, body), tracked, overwrite)

    summary = track_drift(
        track, out, log=tracked, resources=resources, judge_calibration=judge_calibration, overwrite=overwrite
    )
    published = (
        resolve_published(track.persona_adapter, "--persona-adapter") if track.persona_adapter else None
    )
    persona_weights = persona_model(track.model, persona_run_dir(track, out), published)
    starts = {"base": (track.model, None), "persona": persona_weights.start}
    sources = {"base": base_source(track.model), "persona": persona_weights.source}
    settings = config.settings
    wanted = needs(config.arms)

    # shared inputs: the assistant axis, benign rows and reflections per starting model
    if "axis" in wanted:
        run("assistant_axis", assistant_axis_inputs(track), write_assistant_axis)
    for start in starts:
        common = {"source": sources[start], "seed": track.seed}
        if f"benign/{start}" in wanted:
            benign = {**common, "n": settings.benign_prompts, "max_new_tokens": settings.benign_max_new_tokens,
                      "pool": FileInput(GENERIC_PROMPTS_FILE)}  # fmt: skip
            run(f"defences/benign/{start}", benign, write_benign_rows)
        if f"reflections/{start}" in wanted:
            reflections = {**common, "n": settings.reflections, "persona": persona_input(track.persona),
                           "max_new_tokens": settings.reflection_max_new_tokens}  # fmt: skip
            run(f"defences/reflections/{start}", reflections, write_reflections)
    d = out / "defences"
    files = ArmFiles(
        misalignment=out / "misalignment" / "direction.safetensors",
        assistant_axis=out / "assistant_axis" / "axis.safetensors" if "axis" in wanted else None,
        benign={s: d / "benign" / s / "benign.jsonl" for s in starts},
        reflections={s: d / "reflections" / s / "reflections.jsonl" for s in starts},
    )

    # the arms: EM runs on the same rows, seed, steps, checkpoints and probe sets as the main job's
    items = load_contrast_set(out / "contrast" / "contrast.jsonl")
    probes = run_probe_sets(track, persona, items)
    n_layers = model_depth(track.model)
    run_dirs: dict[str, Path] = {}
    sources_of: dict[str, dict] = {}  # arm -> the model its behaviour and cost are read from
    for arm in config.arms:
        if arm in REUSED:
            run_dirs[arm] = out / REUSED[arm]
            continue
        if is_evaluation_time(arm):
            continue  # below: they read the undefended runs
        start = start_of(arm)
        em_config = em_run_config(
            track,
            track.em_dataset,
            starts[start],
            None if start == "base" else persona_weights.identity,
            build_defence(arm, settings, files, n_layers, track.em_dataset),
        )
        run_dirs[arm] = d / "arms" / arm
        # step 0 is the starting model's read: the main job's, else one the arms share
        start_reads = out / "start" / start
        if not is_complete(start_reads_stage(em_config, start_reads, probes, out)):
            start_reads = d / "start" / start
        finetune_from_start(em_config, run_dirs[arm], probes, resources, tracked, out, start_reads, overwrite)

    # capping at evaluation: the undefended run from the same start, read and sampled with the caps on
    caps: dict[str, Path] = {}
    for start in starts:
        if f"caps/{start}" in wanted:
            caps[start] = d / "caps" / start
            floors = {"source": sources[start], "axis": StageOutput(out / "assistant_axis"),
                      "benign": StageOutput(d / "benign" / start), "quantile": settings.cap_quantile,
                      "layers": list(band(n_layers, settings.cap_band))}  # fmt: skip
            run(f"defences/caps/{start}", floors, write_caps)
            release_models()  # the capped reads load their own copy
    for arm in config.arms:
        if is_evaluation_time(arm):
            undefended = out / REUSED[undefended_arm(arm)]
            run_dirs[arm] = d / "arms" / arm
            sources_of[arm] = em_source(undefended, caps=caps[start_of(arm)])
            view = {"em": StageOutput(em_stage(undefended)), "caps": StageOutput(caps[start_of(arm)]),
                    "run": read_em_run(undefended), "probes": Content(probes, probe_key(probes))}  # fmt: skip
            run(f"defences/arms/{arm}/em", view, read_capped_run)
    run_dirs = {arm: run_dirs[arm] for arm in config.arms}  # the order asked for

    # behaviour at the end of EM (the main job's evaluations where they are the same)
    evaluation = {
        **evaluation_inputs(track, judge_calibration),
        "triggered": track.em_dataset if config.triggered else None,
    }
    evals: dict[str, Path] = {"start_base": out / "eval" / "base", "start_persona": out / "eval" / "persona"}
    capability: dict[str, Path] = {}
    # the starting models' likelihood reads are the main job's
    likelihoods: dict[str, Path] = {f"start_{start}": out / "likelihood" / start for start in starts}
    answers = {"answers": FileInput(ORDINARY_ANSWERS_FILE), "limit": settings.capability_answers}
    for start in starts:  # the cost is measured against the starting model
        if any(start_of(a) == start for a in config.arms):
            capability[f"start_{start}"] = d / "capability" / f"start_{start}"
            run(f"defences/capability/start_{start}", {**answers, "source": sources[start]}, write_capability)
            release_models()
    for arm, folder in run_dirs.items():
        source = sources_of.get(arm) or em_source(folder)  # the arm's behaviour and cost: one loaded model
        if arm in REUSED and not config.triggered:
            evals[arm] = out / "eval" / f"{MAIN_RUNS[arm]}_end"
        else:
            evals[arm] = d / "eval" / arm
            run(f"defences/eval/{arm}", {**evaluation, "source": source}, evaluate_model)
        if defence_of(arm) == "activation_capping_train":  # reported with the caps on as well
            capped = f"{arm}+capped"
            evals[capped] = d / "eval" / capped
            run(
                f"defences/eval/{capped}",
                {**evaluation, "source": em_source(folder, capped=True)},
                evaluate_model,
            )
        # cost: log-likelihood of held-out ordinary answers, written independently of every model here
        capability[arm] = d / "capability" / arm
        run(f"defences/capability/{arm}", {**answers, "source": source}, write_capability)
        # the judge-free behavioural read (the main job's stages where the run is the main job's)
        if arm in REUSED:
            likelihoods[arm] = out / "likelihood" / f"{MAIN_RUNS[arm]}_end"
        else:
            likelihoods[arm] = d / "likelihood" / arm
            run(
                f"defences/likelihood/{arm}",
                {"source": source, "labels": FileInput(DEFAULT_LABELS)},
                write_likelihoods,
            )
        release_models()

    analysis_inputs = {
        "config": asdict(config),
        "root": Content(str(out), None),  # where the stages below live; their identities are the key
        "runs": {a: StageOutput(em_stage(r)) for a, r in run_dirs.items()},
        "evaluations": {a: StageOutput(p) for a, p in evals.items()},
        "capability": {a: StageOutput(p) for a, p in capability.items()},
        "likelihoods": {a: StageOutput(p) for a, p in likelihoods.items()},
        "track_analysis": StageOutput(out / "analysis"),
        "contrast": StageOutput(out / "contrast"),
        "misalignment": StageOutput(out / "misalignment"),
        "judge_calibration": judge_calibration,
    }
    run("defences/analysis", analysis_inputs, write_defences_analysis)
    result = analyse_result(d / "analysis")
    result["ran"] = ran
    result["track_report"] = summary["report"]
    return result


def write_defences_analysis(inputs: Inputs, stage: Path) -> dict:
    """The comparison's body: every arm's drift, behaviour and cost from the stages it declares."""
    saved = dict(inputs.config)
    config = DefencesConfig(
        track=TrackConfig(**saved["track"]),
        arms=tuple(saved["arms"]),
        settings=DefenceSettings(**saved["settings"]),
        triggered=saved["triggered"],
    )
    return analyse_defences(
        config,
        Path(inputs.root),
        stage,
        {a: folder.parent for a, folder in inputs.runs.items()},
        dict(inputs.evaluations),
        dict(inputs.capability),
        dict(inputs.likelihoods),
        load_contrast_set(inputs.contrast / "contrast.jsonl"),
        inputs.judge_calibration,
    )


def analyse_result(analysis: Path) -> dict:
    return json.loads((analysis / "summary.json").read_text())


def defences_seeds(
    config: DefencesConfig,
    plan: SeedPlan,
    log=print,
    judge_calibration: dict | None = None,
    overwrite: bool = False,
    resources: Resources = Resources(),  # noqa: B008 (frozen, as track_drift's)
) -> dict:
    """The whole comparison once per seed (each a resumable run of `plan.runs`, shared with the main
    job's seeds), then every arm x metric and every comparison pooled over seeds in
    `<plan.pooled>/defences.json` (mean, t-interval; Holm on one-sample t-tests of the per-seed
    differences)."""
    from analysis.experiments.defence_report import pool_defences, write_outputs

    results = run_seeds(
        config.track,
        plan,
        lambda track, run: run_defences(
            replace(config, track=track),
            run,
            log=log,
            resources=resources,
            judge_calibration=judge_calibration,
            overwrite=overwrite,
        ),
        log,
    )
    ran = [f"s{seed}:{r}" for seed, result in zip(plan.seeds, results) for r in result["ran"]]
    per_seed = [json.loads(Path(result["defences"]).read_text()) for result in results]
    out = plan.pooled
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(pool_defences(per_seed), out, config)
    return {**analyse_result(out), "ran": ran}
