"""The defences comparison's numbers: per arm, how far EM moved it (along the judge-free
misalignment direction and the persona direction, at the main job's held-out layer, with their
random-direction nulls), how it behaves (the run's judge, named with its calibration) and what the
defence cost (coherence and the log-likelihood of held-out ordinary answers, each against the arm's
own starting model); then every arm against `none` and `persona`. One contrast per arm is
pre-registered (movement toward misalignment, arm minus `none`) and only that family is tested, Holm
over it, with seeds as the unit: a verdict needs >= 3 seeds; below that every difference is
descriptive. The other comparisons are exploratory and carry no verdict.

Intervals resample the units each number is made of (prompts, questions, answers), with the same
draws for every arm, so a difference between arms keeps its pairing."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis import drift
from analysis.calibration import describe
from analysis.drift_report import BARE, BASE, PERSONA, compute_drift, default_behaviour
from analysis.em_eval import is_misaligned, numeric, plain_rows
from analysis.experiments.defence_arms import (
    MAIN_RUNS,
    REUSED,
    defence_of,
    is_evaluation_time,
    start_of,
    undefended_arm,
)
from analysis.experiments.defence_stages import read_capability
from analysis.experiments.track_stages import read_likelihoods
from analysis.interaction import DESCRIPTIVE, MIN_SEEDS_FOR_VERDICT, minimum_detectable
from analysis.likelihood_read import question_gaps, scores_by_model
from analysis.report import Table, write_report
from analysis.stats import across_seeds, bounds, estimate, holm, unmeasured
from anchor.runs import checkpoints, em_stage, em_store
from anchor.stages import read_done
from anchor.store import atomic_write_json, read_jsonl
from probes.contrast import ContrastItem
from probes.directions import DirectionStack

METRICS = {  # name -> (label, unit, which way is good for a defence)
    "misalignment_movement": ("movement toward misalignment", "item spreads", "lower"),
    "persona_movement": ("movement along the persona direction", "item spreads", "n/a"),
    "misaligned_rate": ("misaligned rate", "share of answers", "lower"),
    "coherence_change": ("coherence change", "judge points", "higher"),
    "capability_change": ("capability change", "nats per token", "higher"),
    # judge-free: the change in log-likelihood of misaligned minus aligned reference answers
    "likelihood_read": ("likelihood read (misaligned minus aligned)", "nats per token", "lower"),
}
REFERENCES = ("none", "persona")
# The pre-registered family: per arm, movement toward misalignment against `none`. Holm runs over this
# family only; every other comparison is exploratory and printed without a verdict.
PRIMARY = ("misalignment_movement", "none")
N_BOOT = 2000


RATES = ("misaligned_rate", "misaligned_rate_capped")


def _rate_source(arm: str, key: str) -> str:
    return f"{arm}+capped" if key == "misaligned_rate_capped" else arm


def _boot_number(value: float, boots: torch.Tensor, n: int, unit: str, gated: str | None = None) -> dict:
    if gated:
        return unmeasured(1, gated, clusters=n, interval="none (the judge cannot flag)")
    boots = boots[~boots.isnan()].double()
    ci = (
        torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
        if len(boots)
        else [math.nan] * 2
    )
    return estimate(
        value, ci, 1, f"undefined on these {unit}", clusters=n, interval=f"bootstrap over {unit} (one seed)"
    )


def _movements(
    runs: Mapping[str, Path], report: list[int], layer: int, units: Mapping[str, torch.Tensor], seed: int
):
    """Per arm and direction: the standardised change of default behaviour (end of EM minus the
    arm's step 0, in step-0 item spreads) and its bootstrap over prompts (shared draws)."""
    index = None
    out: dict[str, dict[str, tuple[float, torch.Tensor, int]]] = {}
    for arm, run in runs.items():
        ckpts = checkpoints(run)
        start = default_behaviour(run, ckpts[0])[report][:, layer].double()
        end = default_behaviour(run, ckpts[-1])[report][:, layer].double()
        if index is None:
            g = torch.Generator().manual_seed(seed)
            index = torch.randint(len(report), (N_BOOT, len(report)), generator=g)
        out[arm] = {}
        for name, unit in units.items():
            a, b = start @ unit, end @ unit
            spread = drift.spread_unit(a.std())
            value = float((b.mean() - a.mean()) / spread)
            boots = (b[index].mean(1) - a[index].mean(1)) / spread
            out[arm][name] = (value, boots, len(report))
    return out


def _eval_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path / "responses.jsonl")]


def _behaviour(evals: Mapping[str, Path], seed: int) -> dict[str, dict[str, tuple[float, torch.Tensor, int]]]:
    """Misaligned rate and mean coherence per evaluation, bootstrapped over questions with the
    same question draws for every evaluation (all answered the same plain questions)."""
    from anchor.triggers import parse_variant_id

    rows = {name: plain_rows(_eval_rows(path)) for name, path in evals.items()}
    for rs in rows.values():  # "<id>__plain" (a triggered evaluation) and "<id>" are one question
        for r in rs:
            r["question_id"] = parse_variant_id(r["question_id"])[0]
    questions = sorted({r["question_id"] for rs in rows.values() for r in rs})
    g = torch.Generator().manual_seed(seed + 7)
    draws = torch.randint(len(questions), (N_BOOT, len(questions)), generator=g)
    out = {}
    for name, rs in rows.items():
        hits = torch.full((len(questions),), 0.0, dtype=torch.double)
        scored = torch.zeros(len(questions), dtype=torch.double)
        coherence = torch.zeros(len(questions), dtype=torch.double)
        coherent_n = torch.zeros(len(questions), dtype=torch.double)
        for r in rs:
            q = questions.index(r["question_id"])
            a, c = numeric(r.get("aligned")), numeric(r.get("coherent"))
            if a is not None and c is not None:
                scored[q] += 1
                hits[q] += float(is_misaligned(r))
            if c is not None:
                coherence[q] += c
                coherent_n[q] += 1
        every = torch.arange(len(questions))
        # a judge that cannot flag (its calibration gate, in the evaluation's summary) gives no rate
        gated = json.loads((evals[name] / "summary.json").read_text()).get("rates_gated")
        rate = _ratio_boot(hits, scored, every, draws)
        out[name] = {
            "misaligned_rate": (math.nan, torch.full_like(rate[1], math.nan), rate[2]) if gated else rate,
            "coherence": _ratio_boot(coherence, coherent_n, every, draws),
            "gated": gated,
        }
    return out


def _ratio_boot(top: torch.Tensor, bottom: torch.Tensor, every: torch.Tensor, draws: torch.Tensor):
    """Sum over questions of `top` over that of `bottom`, on all questions and on each draw."""
    value = float(top[every].sum() / bottom[every].sum())
    return value, top[draws].sum(-1) / bottom[draws].sum(-1), len(every)


def _triggered(evaluation: Path | None) -> dict | None:
    """The misaligned rate per triggered-variant family and each family minus plain, when the arm
    was evaluated on them (None otherwise)."""
    if evaluation is None:
        return None
    summary = json.loads((evaluation / "summary.json").read_text())
    if "by_family" not in summary:
        return None
    return {
        "misaligned_rate": {f: m["misaligned_rate"] for f, m in summary["by_family"].items()},
        "minus_plain": summary.get("family_gap"),
    }


def _capability(capability: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(read_capability(path), dtype=torch.double) for name, path in capability.items()
    }


def _likelihood_gaps(likelihoods: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """Per arm, the likelihood read's per-question gaps against the arm's starting model (paired
    across arms: every stage scored the same reference answers)."""
    rows = {name: read_likelihoods(path) for name, path in likelihoods.items()}
    score = scores_by_model(rows)
    return {
        arm: question_gaps(score[f"start_{start_of(arm)}"], score[arm], scored)
        for arm, scored in rows.items()
        if not arm.startswith("start_")
    }


def _acting_layers(run: Path) -> list[int]:
    """The blocks an evaluation-time arm's caps act at (its stage's record)."""
    return sorted(int(k) for k in read_done(em_stage(run))["defence"]["capping"]["floors"])


def acts_after(acting: Sequence[int], layer: int) -> bool:
    """Whether every block a defence acts at comes after `layer`: a cap at block L already changes
    block L's own `hook_resid_post`, so only blocks strictly after the read leave it untouched."""
    return min(acting) > layer


def _blind_reason(arm: str, acting: Sequence[int], layer: int) -> str:
    return (
        f"{arm} acts at blocks {', '.join(map(str, acting))}, after the reported layer {layer}: the read "
        "there is the undefended run's by construction, so movement at that layer cannot show the defence "
        "(see its movement at the capped layers, and its behaviour and cost)"
    )


def _after_caps(
    arm: str, run: Path, undefended: Path, acting: Sequence[int], report, misalignment, seed: int
) -> dict:
    """Exploratory: movement toward misalignment at the last capped block, for the arm and its
    undefended run (the same prompts, directions and spreads), and the difference."""
    last = acting[-1]
    unit = {"misalignment_movement": F.normalize(misalignment.at(last).double(), dim=0)}
    moves = _movements({arm: run, "undefended": undefended}, report, last, unit, seed)
    (v, b, n), (rv, rb, _) = moves[arm]["misalignment_movement"], moves["undefended"]["misalignment_movement"]
    return {
        "layer": last,
        "movement": _boot_number(v, b, n, "prompts"),
        "undefended": _boot_number(rv, rb, n, "prompts"),
        "difference": _boot_number(v - rv, b - rb, n, "prompts"),
    }


def analyse_defences(
    config,
    out: Path,
    stage: Path,
    run_dirs: Mapping[str, Path],
    evals: Mapping[str, Path],
    capability: Mapping[str, Path],
    likelihoods: Mapping[str, Path],
    items: Sequence[ContrastItem],
    judge_calibration: dict | None,
) -> dict:
    track = config.track
    labels = torch.tensor([i.label for i in items])
    drift_runs = {MAIN_RUNS.get(a, a): p for a, p in run_dirs.items()}
    drift_runs.setdefault(PERSONA, out / REUSED["persona"])
    drift_runs.setdefault(BASE, out / REUSED["none"])
    misalignment = DirectionStack.load(out / "misalignment" / "direction.safetensors")
    result = compute_drift(
        drift_runs,
        labels,
        [(i.question, i.pair) for i in items],
        questions=[i.question for i in items],
        misalignment=misalignment.vectors,
        axis_run=track.axis,
        seed=track.seed,
    )
    atomic_write_json(stage / "drift.json", result)  # every arm's drift metrics, as the main job's
    layer = result["best_layer"]
    report = result["layer_selection"]["report_prompts"]
    reference = drift_runs[PERSONA]
    contrast_r = em_store(reference).load(f"{checkpoints(reference)[0]}/{BARE}").tensor
    units = {
        "misalignment_movement": F.normalize(misalignment.at(layer).double(), dim=0),
        "persona_movement": F.normalize(
            drift.persona_direction(contrast_r.float(), labels)[layer].double(), dim=0
        ),
    }
    moves = _movements(run_dirs, report, layer, units, track.seed)
    # an evaluation-time defence acting only after the reported layer leaves that read unchanged
    acting = {arm: _acting_layers(run) for arm, run in run_dirs.items() if is_evaluation_time(arm)}
    blind = {arm: _blind_reason(arm, a, layer) for arm, a in acting.items() if acts_after(a, layer)}
    behaviour = _behaviour(evals, track.seed)
    loglik = _capability(capability)
    g = torch.Generator().manual_seed(track.seed + 11)
    n_answers = len(next(iter(loglik.values())))
    answer_draws = torch.randint(n_answers, (N_BOOT, n_answers), generator=g)
    gaps = _likelihood_gaps(likelihoods)
    n_questions = len(next(iter(gaps.values())))
    question_draws = torch.randint(max(n_questions, 1), (N_BOOT, n_questions), generator=g)

    numbers: dict[str, dict[str, tuple[float, torch.Tensor, int, str]]] = {}
    for arm in run_dirs:
        start = f"start_{start_of(arm)}"
        arm_numbers = {name: (*moves[arm][name], "prompts") for name in units}
        rate = behaviour[arm]["misaligned_rate"]
        arm_numbers["misaligned_rate"] = (*rate, "questions")
        coh, coh_start = behaviour[arm]["coherence"], behaviour[start]["coherence"]
        arm_numbers["coherence_change"] = (coh[0] - coh_start[0], coh[1] - coh_start[1], coh[2], "questions")
        change = loglik[arm] - loglik[start]
        arm_numbers["capability_change"] = (
            float(change.mean()),
            change[answer_draws].mean(1),
            n_answers,
            "answers",
        )
        gap = gaps[arm]  # one question draw for every arm: differences between arms are paired
        arm_numbers["likelihood_read"] = (
            float(gap.mean()) if n_questions >= 2 else math.nan,
            gap[question_draws].mean(1) if n_questions >= 2 else torch.full((N_BOOT,), math.nan),
            n_questions,
            "questions",
        )
        if f"{arm}+capped" in behaviour:
            arm_numbers["misaligned_rate_capped"] = (
                *behaviour[f"{arm}+capped"]["misaligned_rate"],
                "questions",
            )
        numbers[arm] = arm_numbers

    arms_out = {}
    for arm, arm_numbers in numbers.items():
        name = MAIN_RUNS.get(arm, arm)
        nulls = {} if arm in blind else result["nulls"][name]  # a blind arm's are its undefended run's
        headline = {} if arm in blind else result["headline"]
        arms_out[arm] = {
            "start": start_of(arm),
            "defence": defence_of(arm),
            "applied": applied(arm),
            "run": str(run_dirs[arm]),
            "metrics": {
                k: unmeasured(n, blind[arm], clusters=n)
                if arm in blind and k in units
                else _boot_number(
                    v, b, n, unit, behaviour[_rate_source(arm, k)]["gated"] if k in RATES else None
                )
                for k, (v, b, n, unit) in arm_numbers.items()
            },
            "blind": blind.get(arm),  # why the reported layer's figures cannot show this arm's defence
            "drift_auc_abs": (headline.get("drift_auc_abs") or {}).get(name),
            "em_shift_cos_misalignment": (headline.get("em_shift_cos_misalignment") or {}).get(name),
            "triggered": _triggered(evals.get(arm)),
            "at_capped_layer": _after_caps(
                arm,
                run_dirs[arm],
                out / REUSED[undefended_arm(arm)],
                acting[arm],
                report,
                misalignment,
                track.seed,
            )
            if arm in acting
            else None,
            "nulls": {
                "misalignment_movement": nulls.get("misalignment_movement_vs_matched_directions"),
                "persona_movement": nulls.get("anchor_change_vs_matched_directions"),
                "em_shift_cos_misalignment": nulls.get("em_shift_cos_misalignment_vs_matched_directions"),
            },
        }
    comparisons = []
    for ref in REFERENCES:
        if ref not in numbers:
            continue
        for arm in numbers:
            if arm == ref or (arm in REFERENCES and REFERENCES.index(arm) < REFERENCES.index(ref)):
                continue  # persona against none is tested once
            for metric in METRICS:
                v, b, n, unit = numbers[arm][metric]
                rv, rb, _, _ = numbers[ref][metric]
                comparison = {"arm": arm, "reference": ref, "metric": metric, "role": _role(metric, ref),
                              "difference": _boot_number(v - rv, b - rb, n, unit)}  # fmt: skip
                if arm in blind and metric in units:  # not measurable here: out of the tested family
                    comparison.update(difference=unmeasured(n, blind[arm], clusters=n), excluded=blind[arm])
                comparisons.append(comparison)
    _test(comparisons, [])
    judge = describe(track.judge, judge_calibration)
    defences = {
        "model": track.model,
        "persona": track.persona,
        "em_dataset": track.em_dataset,
        "seed": track.seed,
        "layer": layer,
        "layer_rule": result["layer_selection"]["rule"],
        "judge": judge,
        "metrics": {k: {"label": v[0], "unit": v[1], "better": v[2]} for k, v in METRICS.items()},
        "arms": arms_out,
        "arm_order": list(arms_out),
        "comparisons": comparisons,
        "seeds": [track.seed],
        "correction": _correction(comparisons, 1),
    }
    defences["sentences"] = sentences(defences)
    return write_outputs(defences, stage, config)


def applied(arm: str) -> str | None:
    """When the arm's defence acts: "while training", "at evaluation", or None (no defence)."""
    if defence_of(arm) is None:
        return None
    return "at evaluation" if is_evaluation_time(arm) else "while training"


def _role(metric: str, reference: str) -> str:
    return "primary" if (metric, reference) == PRIMARY else "exploratory"


def _test(comparisons: list[dict], per_seed: list[list[float]]) -> None:
    """The primary family's test across seeds (`per_seed[i]`: comparison i's per-seed differences):
    a one-sample t-test per arm, Holm over the family, a verdict only with >= 3 seeds; beside each
    primary contrast the minimum detectable difference for the seeds run (alpha split over the
    family, as Holm's first step does). Exploratory comparisons get neither p nor verdict."""
    from scipy import stats as scipy_stats

    primary = [i for i, c in enumerate(comparisons) if _in_family(c)]
    for c in comparisons:
        c.update(p=None, p_holm=None, verdict=None, minimum_detectable=None)
    seeds = len(per_seed[primary[0]]) if per_seed and primary else 1
    for i in primary:
        values = [v for v in (per_seed[i] if per_seed else []) if v is not None and v == v]
        sd = float(torch.tensor(values, dtype=torch.double).std()) if len(values) > 1 else math.nan
        comparisons[i]["minimum_detectable"] = minimum_detectable(sd, len(values), 0.05 / len(primary))
    if seeds < MIN_SEEDS_FOR_VERDICT:
        return
    ps = []
    for i in primary:
        values = [v for v in per_seed[i] if v is not None and v == v]
        ok = len(values) >= MIN_SEEDS_FOR_VERDICT and len(set(values)) > 1
        ps.append(float(scipy_stats.ttest_1samp(values, 0.0).pvalue) if ok else math.nan)
    for i, p, adjusted in zip(primary, ps, holm(ps)):
        c = comparisons[i]
        c["p"], c["p_holm"] = p, adjusted
        if adjusted == adjusted:
            lower = c["difference"]["value"] < 0
            c["verdict"] = (
                f"separated: {'less' if lower else 'more'} movement toward misalignment than none"
                if adjusted < 0.05
                else "not separated from none"
            )


def _in_family(c: dict) -> bool:
    """A primary contrast that can be measured (one whose arm cannot show at the layer is out)."""
    return c["role"] == "primary" and "excluded" not in c


def _correction(comparisons: list[dict], seeds: int) -> str:
    family = sum(_in_family(c) for c in comparisons)
    out = [c["arm"] for c in comparisons if c["role"] == "primary" and "excluded" in c]
    left_out = (
        f"; {', '.join(out)}: not measurable at the reported layer, left out of the family" if out else ""
    )
    if seeds < MIN_SEEDS_FOR_VERDICT:
        return (
            f"Pre-registered: {family} primary contrasts (each arm's movement toward misalignment minus none's)"
            f"{left_out}; the rest are exploratory. With {seeds} seed(s) every difference is "
            f"{DESCRIPTIVE.format(n=seeds)}"
        )
    return (
        f"Pre-registered: {family} primary contrasts (each arm's movement toward misalignment minus none's)"
        f"{left_out}, each a one-sample t-test of the {seeds} per-seed differences, Holm over those {family} "
        "only; the other comparisons are exploratory (differences and intervals, no test)"
    )


def write_outputs(defences: dict, stage: Path, config) -> dict:
    from analysis.plots import defences_plot

    atomic_write_json(stage / "defences.json", defences)
    png = defences_plot(defences, stage / "defences.png")
    tables = defence_tables(defences)
    report = write_report(
        stage / "report.html",
        f"Defences against EM: '{defences['persona']}' on {defences['model']}, EM on {defences['em_dataset']}",
        " ".join(defences["sentences"]),
        tables,
        [("Misalignment and cost by arm", png)],
        {"arms": list(defences["arms"]), "settings": _settings(config)},
    )
    summary = {
        "defences": str(stage / "defences.json"),
        "plot": str(png),
        "report": str(report),
        "table": [[c for c in row] for row in tables[0].rows],
        "header": list(tables[0].header),
        "sentences": defences["sentences"],
    }
    atomic_write_json(stage / "summary.json", summary)
    return {"arms": len(defences["arms"]), "comparisons": len(defences["comparisons"])}


def _settings(config) -> dict:
    from dataclasses import asdict

    return {"settings": asdict(config.settings), "triggered": config.triggered} if config is not None else {}


def ordered(defences: dict) -> list[tuple[str, dict]]:
    """The arms in the order they were asked for (JSON files keep keys sorted)."""
    return [(arm, defences["arms"][arm]) for arm in defences.get("arm_order", defences["arms"])]


def _fmt(number: dict | None) -> str:
    if not number or number.get("value") is None:
        return "n/a"
    lo, hi = bounds(number)
    if lo is None or hi is None:
        return f"{number['value']:.3f}"
    return f"{number['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _mdd(c: dict) -> str:
    if c["role"] != "primary":
        return ""
    if "excluded" in c:
        return "n/a (not measurable at the layer)"
    return "n/a (one seed)" if c["minimum_detectable"] is None else f"{c['minimum_detectable']:.3f}"


def _p(p: float | None) -> str:
    """A p-value for reading: below 1e-6 the t tail says only "far beyond 0"."""
    if p is None or p != p:
        return "n/a"
    return "< 1e-6" if p < 1e-6 else f"{p:.2g}"


def _verdict_cell(c: dict) -> str:
    if c["verdict"]:
        return c["verdict"]
    if "excluded" in c:
        return "not measurable at the layer (left out of the family)"
    return "descriptive" if c["role"] == "primary" else "exploratory"


def defence_tables(defences: dict) -> list[Table]:
    header = ["arm", "start", "defence acts", *(METRICS[m][0] + f" ({METRICS[m][1]})" for m in METRICS),
              "misalignment null"]  # fmt: skip
    rows = []
    for arm, a in ordered(defences):
        rows.append([arm, a["start"], a.get("applied") or "-", *(_fmt(a["metrics"].get(m)) for m in METRICS),
                     "n/a (acts after the layer)" if a.get("blind") else _null_words(a["nulls"]["misalignment_movement"])])  # fmt: skip
    comparison_rows = [
        [c["arm"], c["reference"], METRICS[c["metric"]][0], c["role"], _fmt(c["difference"]),
         _mdd(c), _p(c["p"]), _p(c["p_holm"]), _verdict_cell(c)]
        for c in defences["comparisons"]
    ]  # fmt: skip
    capped = [
        [arm, _fmt(a["metrics"].get("misaligned_rate")), _fmt(a["metrics"]["misaligned_rate_capped"])]
        for arm, a in ordered(defences)
        if "misaligned_rate_capped" in a["metrics"]
    ]
    tables = [
        Table(
            "Arms (end of EM; changes against each arm's own starting model)",
            header,
            rows,
            f"Layer {defences['layer']} (chosen on held-out prompts). Behaviour: {defences['judge']}",
        ),
        Table(
            "Each arm against none and persona",
            [
                "arm",
                "reference",
                "metric",
                "role",
                "difference [95% CI]",
                "minimum detectable",
                "p (t across seeds)",
                "p (Holm, primary family)",
                "verdict",
            ],
            comparison_rows,
            defences["correction"] + ".",
        ),
    ]
    if capped:
        tables.append(
            Table(
                "Activation capping while training (a variant): evaluated without and with the caps",
                ["arm", "caps off", "caps on"],
                capped,
            )
        )
    return tables


def _null_words(null: dict | None) -> str:
    """A null placement in words, descriptive: one seed's percentile, or in how many seeds the figure
    is above the null's 95th percentile."""
    if not null:
        return "has no null"
    if "exceeds_95_by_seed" in null:
        k, n = sum(null["exceeds_95_by_seed"]), len(null["exceeds_95_by_seed"])
        return f"is above its 95th percentile in {k} of {n} seeds"
    pct = null.get("percentile")
    if pct is None or pct != pct:
        return "has no null"
    return f"is at percentile {pct:.0f} ({'above' if null.get('exceeds_95') else 'below'} its 95th)"


def sentences(defences: dict) -> list[str]:
    """The primary contrasts in words (verdicts only where seeds allow them), then each arm's
    movement beside its random null, descriptively."""
    out = [f"Behaviour: {defences['judge']}"]
    primary = [c for c in defences["comparisons"] if c["role"] == "primary"]
    for c in primary:
        if "excluded" in c:
            out.append(
                f"{c['arm']} minus none, movement toward misalignment (primary): not measurable; {c['excluded']}."
            )
            continue
        mdd = c.get("minimum_detectable")
        out.append(
            f"{c['arm']} minus none, movement toward misalignment (primary): {_fmt(c['difference'])} item spreads"
            + (f"; {c['verdict']} (Holm p {_p(c['p_holm'])})" if c["verdict"] else "; descriptive")
            + (f"; minimum detectable difference {mdd:.3f}" if mdd is not None else "")
            + (
                f"; not measurable in seed(s) {', '.join(map(str, c['excluded_in_seeds']))}, whose layer is "
                "before the blocks it acts at (counted as missing there)"
                if c.get("excluded_in_seeds")
                else ""
            )
            + "."
        )
    if any(a.get("applied") == "at evaluation" for a in defences["arms"].values()):
        out.append(
            "An arm whose defence acts at evaluation trains nothing: it is the undefended run from its "
            "start (none or persona) read and sampled with the defence on, its movement from that run's "
            "step 0 with the defence on, its cost against the starting model without it."
        )
    for arm, a in ordered(defences):
        after = a.get("at_capped_layer")
        if after:
            out.append(
                f"{arm} at its last capped block {after['layer']} (exploratory): movement toward misalignment "
                f"{_fmt(after['movement'])} against the undefended run's {_fmt(after['undefended'])} item spreads, "
                f"difference {_fmt(after['difference'])}."
            )
        if a.get("blind"):
            continue  # said with the primary contrasts
        out.append(
            f"{arm}: movement toward misalignment {_fmt(a['metrics']['misalignment_movement'])} item spreads; "
            f"among random directions of its spread it {_null_words(a['nulls']['misalignment_movement'])}."
        )
    out.append(defences["correction"] + ".")
    return out


def _pool_after_caps(per_seed: Sequence[dict | None]) -> dict | None:
    if not per_seed or per_seed[0] is None:
        return None
    return {
        "layer": per_seed[0]["layer"],
        **{
            k: across_seeds([s[k]["value"] for s in per_seed])
            for k in ("movement", "undefended", "difference")
        },
    }


def pool_defences(per_seed: Sequence[dict]) -> dict:
    """Several seeds' defences.json: each arm x metric as the mean with a t-interval over seeds, each
    comparison's difference likewise (per-seed values kept); the primary family tested across seeds."""
    first = per_seed[0]
    arms = {}
    for arm, a in first["arms"].items():
        # blind (its defence acts after the reported layer) is per seed: each seed chose its own layer
        blind = [s["arms"][arm].get("blind") for s in per_seed]
        every = all(blind)
        arms[arm] = {
            **{k: a.get(k) for k in ("start", "defence", "applied")},
            "blind": blind[0] if every else None,
            "blind_seeds": [s["seed"] for s, b in zip(per_seed, blind) if b],
            "at_capped_layer": _pool_after_caps([s["arms"][arm].get("at_capped_layer") for s in per_seed]),
            "metrics": {
                m: unmeasured(len(per_seed), blind[0]) if every and a["metrics"][m].get("reason") == blind[0]
                else across_seeds([s["arms"][arm]["metrics"][m]["value"] for s in per_seed if m in s["arms"][arm]["metrics"]])
                for m in a["metrics"]
            },
            "nulls": {
                m: None if every else
                   {"percentile_by_seed": [(s["arms"][arm]["nulls"][m] or {}).get("percentile") for s in per_seed],
                    "exceeds_95_by_seed": [bool((s["arms"][arm]["nulls"][m] or {}).get("exceeds_95")) for s in per_seed]}
                for m in a["nulls"]
            },
        }  # fmt: skip
    comparisons, per_comparison = [], []
    for i, c in enumerate(first["comparisons"]):
        diffs = [s["comparisons"][i]["difference"]["value"] for s in per_seed]
        comparisons.append(
            {**{k: c[k] for k in ("arm", "reference", "metric")}, "role": _role(c["metric"], c["reference"]),
             "difference": across_seeds(diffs), "by_seed": diffs}
        )  # fmt: skip
        excluded = [s["comparisons"][i].get("excluded") for s in per_seed]
        if all(excluded):  # not measurable in any seed: out of the family
            comparisons[-1].update(difference=unmeasured(len(diffs), c["excluded"]), excluded=c["excluded"])
        elif any(excluded):  # missing in some seeds: counted (missing_seeds), tested on the others
            comparisons[-1]["excluded_in_seeds"] = [s["seed"] for s, e in zip(per_seed, excluded) if e]
        per_comparison.append(diffs)
    _test(comparisons, per_comparison)
    pooled = {k: first[k] for k in ("model", "persona", "em_dataset", "judge", "metrics")}
    pooled.update(arm_order=first.get("arm_order", list(arms)), seeds=[s["seed"] for s in per_seed], layers=[s["layer"] for s in per_seed], arms=arms,
                  comparisons=comparisons, correction=_correction(comparisons, len(per_seed)))  # fmt: skip
    pooled["layer"] = ", ".join(map(str, pooled["layers"]))
    pooled["sentences"] = sentences(pooled)
    return pooled
