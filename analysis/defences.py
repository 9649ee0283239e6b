"""Defences side by side: character training against the other ways to resist EM, on one harness.

The main experiment (`analysis.track.track_drift`) runs first, or is reused when complete: its
base + EM, persona + EM and persona + secure runs are the arms `none`, `persona` and `secure`.
Every other arm is an EM run on the same corrupted rows, seed, steps and checkpoints (interleaving's
added rows are extra, so it trains about 10% longer), read on the
same probe sets, from the base model (`X`) or the character-trained one (`persona+X`), with one
in-training defence (`train.defences`). Then each arm's behaviour (the run's judge; triggered
variants when asked), its cost (coherence and the log-likelihood of held-out ordinary answers,
against its own starting model) and the drift metrics of the main job with their nulls, compared
with `none` and `persona` and corrected for multiple comparisons (`analysis.defence_report`).

Run directory (the main experiment's, so its runs are reused):
    ...                              the main experiment (analysis/track.py layout)
    assistant_axis/                  the assistant axis (capping arms), shared with --monitor runs
    defences/benign/<start>/         generic prompts answered by the starting model ("base", "persona")
    defences/reflections/<start>/    its self-assessments from the constitution
    defences/arms/<arm>/             EM runs (train/em.py layout)
    defences/eval/<arm>/             behaviour at the end of EM (<arm>+capped: with the caps on)
    defences/capability/<model>/     log-likelihood of the held-out ordinary answers
    defences/analysis/               defences.json, defences.png, report.html
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from analysis.capability import ORDINARY_ANSWERS_FILE
from analysis.defence_arms import (
    MAIN_RUNS,
    REUSED,
    ArmFiles,
    DefenceSettings,
    build_defence,
    defence_of,
    needs,
    start_of,
)
from analysis.defence_report import analyse_defences
from analysis.defence_stages import write_benign_rows, write_capability, write_reflections
from analysis.judge import Judge, make_judge
from analysis.track import (
    Resources,
    TrackConfig,
    _finetune_em,
    assistant_axis_key,
    em_run_config,
    persona_run_dir,
    persona_start,
    run_probe_sets,
    track_drift,
)
from analysis.track_stages import evaluate_model, load_items, write_assistant_axis
from anchor.constitution import load_persona
from anchor.models import load_model, model_depth
from anchor.prompt_pool import GENERIC_PROMPTS_FILE
from train.defences import inoculation_prompt
from train.em import load_em_model, load_starting_model
from train.stages import run_stage, stage_identity


@dataclass(frozen=True)
class DefencesConfig:
    track: TrackConfig
    arms: tuple[str, ...]
    settings: DefenceSettings = field(default_factory=DefenceSettings)
    triggered: bool = False  # evaluate arms on the triggered question variants too


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_defences(
    config: DefencesConfig,
    out: str | Path,
    log=print,
    resources: Resources = Resources(),  # noqa: B008 (frozen, as track_drift's)
    judge_calibration: dict | None = None,
) -> dict:
    """Every arm, resumable arm by arm; returns the analysis summary (`defences.json`'s path,
    the table, the sentences)."""
    out = Path(out)
    for arm in config.arms:
        defence_of(arm)  # unknown arms fail before anything runs
    track = config.track
    if any(defence_of(a) == "inoculation" for a in config.arms):  # no prompt for the dataset: fail now
        inoculation_prompt(track.em_dataset, config.settings.inoculation_prompt)
    ran: list[str] = []

    def tracked(message: str) -> None:
        log(message)
        if message.endswith(": running"):
            ran.append(message.removeprefix("stage ").removesuffix(": running"))

    summary = track_drift(track, out, log=tracked, resources=resources, judge_calibration=judge_calibration)
    d = out / "defences"
    persona_dir = persona_run_dir(track, out)
    starts = {"base": (track.model, None), "persona": persona_start(persona_dir)}
    # what each starting model is, for the keys of the stages that sample or score it
    sources = {"base": f"base:{track.model}", "persona": stage_identity(persona_dir / "sft")}
    settings = config.settings
    wanted = needs(config.arms)

    def stage(path: Path, key: dict, body) -> dict:
        return run_stage(
            path, key, body, log=lambda m: tracked(m.replace(path.name, str(path.relative_to(out)), 1))
        )

    # shared inputs: the assistant axis, benign rows and reflections per starting model
    if "axis" in wanted:
        stage(out / "assistant_axis", assistant_axis_key(track), lambda s: write_assistant_axis(track, s))
    for start, (spec, adapter) in starts.items():
        key = {"source": sources[start], "seed": track.seed}
        if f"benign/{start}" in wanted:
            benign_key = {**key, "n": settings.benign_prompts, "tokens": settings.benign_max_new_tokens,
                          "pool_sha256": _sha(GENERIC_PROMPTS_FILE)}  # fmt: skip
            stage(
                d / "benign" / start,
                benign_key,
                lambda s, spec=spec, adapter=adapter: write_benign_rows(
                    spec, adapter, settings.benign_prompts, settings.benign_max_new_tokens, track.seed, s
                ),
            )
        if f"reflections/{start}" in wanted:
            reflection_key = {**key, "n": settings.reflections, "tokens": settings.reflection_max_new_tokens,
                              "persona_sha256": _persona_hash(track.persona)}  # fmt: skip
            stage(
                d / "reflections" / start,
                reflection_key,
                lambda s, spec=spec, adapter=adapter: write_reflections(
                    spec,
                    adapter,
                    track.persona,
                    settings.reflections,
                    settings.reflection_max_new_tokens,
                    track.seed,
                    s,
                ),  # fmt: skip
            )
    files = ArmFiles(
        misalignment=out / "misalignment" / "direction.safetensors",
        assistant_axis=out / "assistant_axis" / "axis.safetensors" if "axis" in wanted else None,
        benign={s: d / "benign" / s / "benign.jsonl" for s in starts},
        reflections={s: d / "reflections" / s / "reflections.jsonl" for s in starts},
    )

    # the arms: EM runs on the same rows, seed, steps, checkpoints and probe sets as the main job's
    items = load_items(out / "contrast" / "contrast.jsonl")
    probes = run_probe_sets(track, load_persona(track.persona), items)
    n_layers = model_depth(track.model)
    run_dirs: dict[str, Path] = {}
    for arm in config.arms:
        if arm in REUSED:
            run_dirs[arm] = out / REUSED[arm]
            continue
        start = start_of(arm)
        em_config = em_run_config(
            track,
            track.em_dataset,
            starts[start],
            None if start == "base" else sources["persona"],
            build_defence(arm, settings, files, n_layers, track.em_dataset),
        )
        run_dirs[arm] = d / "arms" / arm
        _finetune_em(
            em_config,
            run_dirs[arm],
            probes,
            resources,
            lambda m, a=arm: tracked(m.replace("em", f"arm {a}", 1)),
        )

    # behaviour at the end of EM (the main job's evaluations where they are the same)
    judge: list[Judge] = []

    def get_judge() -> Judge:
        if not judge:
            judge.append(make_judge(track.judge))
        return judge[0]

    eval_key = {"judge": track.judge, "samples": track.eval_samples, "tokens": track.eval_max_new_tokens,
                "seed": track.seed, "triggered": config.triggered}  # fmt: skip
    evals: dict[str, Path] = {"start_base": out / "eval" / "base", "start_persona": out / "eval" / "persona"}
    capability: dict[str, Path] = {}
    limit = settings.capability_answers
    answers_key = {"answers_sha256": _sha(ORDINARY_ANSWERS_FILE), **({"answers": limit} if limit else {})}
    for start, (spec, adapter) in starts.items():  # the cost is measured against the starting model
        if any(start_of(a) == start for a in config.arms):
            capability[f"start_{start}"] = d / "capability" / f"start_{start}"
            loader = (
                (lambda s=spec: load_model(s))
                if adapter is None
                else (lambda s=spec, a=adapter: load_starting_model(s, a))
            )
            stage(
                capability[f"start_{start}"],
                {**answers_key, "source": sources[start]},
                lambda s, f=loader: write_capability(f, s, limit),
            )
    for arm, run in run_dirs.items():
        trained = _LoadOnce(run)  # the arm's behaviour and its cost read one loaded model
        if arm in REUSED and not config.triggered:
            evals[arm] = out / "eval" / f"{MAIN_RUNS[arm]}_end"
        else:
            evals[arm] = d / "eval" / arm
            stage(
                evals[arm],
                {**eval_key, "source": stage_identity(run / "em")},
                lambda s, t=trained: evaluate_model(track, t, get_judge(), s, config.triggered),
            )
        if defence_of(arm) == "activation_capping":  # reported with the caps on as well
            capped = f"{arm}+capped"
            evals[capped] = d / "eval" / capped
            stage(
                evals[capped],
                {**eval_key, "source": stage_identity(run / "em"), "capped": True},
                lambda s, r=run: evaluate_model(track, lambda: _capped(r), get_judge(), s, config.triggered),
            )
        # cost: log-likelihood of held-out ordinary answers, written independently of every model here
        capability[arm] = d / "capability" / arm
        stage(
            capability[arm],
            {**answers_key, "source": stage_identity(run / "em")},
            lambda s, t=trained: write_capability(t, s, limit),
        )
        trained.release()

    analysis_key = {
        "config": _key(config),
        "runs": {a: stage_identity(r / "em") for a, r in run_dirs.items()},
        "evaluations": {a: stage_identity(p) for a, p in evals.items()},
        "capability": {a: stage_identity(p) for a, p in capability.items()},
        "track_analysis": stage_identity(out / "analysis"),
        **({"judge_calibration": judge_calibration} if judge_calibration else {}),
    }
    stage(
        d / "analysis",
        analysis_key,
        lambda s: analyse_defences(config, out, s, run_dirs, evals, capability, items, judge_calibration),
    )
    result = analyse_result(d / "analysis")
    result["ran"] = ran
    result["track_report"] = summary["report"]
    return result


class _LoadOnce:
    """A loader of one arm's trained model that loads it at most once for the stages that need it
    (none, when they are all complete), so evaluation and capability share one load."""

    def __init__(self, run: Path) -> None:
        self.run, self.loaded = run, None

    def __call__(self):
        if self.loaded is None:
            self.loaded = load_em_model(self.run)
        return self.loaded

    def release(self) -> None:
        self.loaded = None


def analyse_result(analysis: Path) -> dict:
    return json.loads((analysis / "summary.json").read_text())


def _key(config: DefencesConfig) -> dict:
    from analysis.track import _config_key

    return {"track": _config_key(config.track), "arms": list(config.arms), "settings": asdict(config.settings),
            "triggered": config.triggered}  # fmt: skip


def _persona_hash(persona: str) -> str:
    p = load_persona(persona)
    return hashlib.sha256(repr([(t.trait, t.questions) for t in p.traits]).encode()).hexdigest()


def _capped(run: Path):
    """The arm's trained model with its caps on (the floors it trained with), for evaluation."""
    from anchor.hooks import cap
    from probes.directions import DirectionStack
    from train.em import read_run_config

    model, tokenizer = load_em_model(run)
    defence = read_run_config(run).defence
    floors = {
        int(k): v
        for k, v in json.loads((run / "em" / "done.json").read_text())["defence"]["capping"]["floors"].items()
    }
    axis = DirectionStack.load(defence.cap_axis)
    stack = ExitStack()  # left open: the caps stay on this model, which lives only for the evaluation
    stack.enter_context(cap(model, {layer: axis.at(layer) for layer in floors}, floors))
    model._defence_caps = stack  # keep the hooks' owner alive with the model
    return model, tokenizer


def defences_seeds(
    config: DefencesConfig,
    seeds: list[int],
    runs: list[Path],
    out: Path,
    log=print,
    judge_calibration: dict | None = None,
) -> dict:
    """The whole comparison once per seed (each a resumable run in `runs[i]`), then every arm x
    metric and every comparison pooled over seeds in `<out>/defences.json` (mean, t-interval;
    Holm on one-sample t-tests of the per-seed differences)."""
    from analysis.defence_report import pool_defences, write_outputs

    ran = []
    per_seed = []
    for seed, run in zip(seeds, runs, strict=True):
        seeded = replace(config, track=replace(config.track, seed=seed))
        result = run_defences(seeded, run, log=log, judge_calibration=judge_calibration)
        ran += [f"s{seed}:{r}" for r in result["ran"]]
        per_seed.append(json.loads(Path(result["defences"]).read_text()))
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(pool_defences(per_seed), out, config)
    return {**analyse_result(out), "ran": ran}
