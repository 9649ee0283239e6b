"""Matched alarms: the representation and the behavioural alarm asked the same question, at the same
checkpoints, at the same level, against the same reference, so that which one fires first can mean
something.

`analysis.monitor`'s two alarms differ in power: the representation alarm ranks a direction among 200
random ones at every checkpoint, the behavioural one needs non-overlapping intervals from a few dozen
answers at every k-th checkpoint. "The representation leads" is then expected even when both signals
change together. Here each alarm compares an EM run with its control run (the same start and recipe,
control data) at each checkpoint where *both* signals were read for *both* runs:

- its signal is a per-unit change since step 0, paired across the two runs because both read the same
  units from the same start: per report prompt, the shift of the default-behaviour read along the
  frozen misalignment direction (in step-0 prompt spreads); per plain evaluation question, the judged
  misaligned rate;
- at each shared checkpoint a sign-flip test asks whether the EM run's mean change exceeds the
  control's (exact over all sign patterns up to 2^14, Monte Carlo beyond), at level alpha / K over the
  K shared checkpoints (Bonferroni over the looks).

What the level controls, exactly: for these two trained models, if each unit's EM-minus-control change
were symmetric about 0, each alarm would fire with probability at most alpha. Training randomness is
not in it: two fine-tunes of one recipe also differ by some shared offset, which a test across units
will find given enough units. So with one seed a firing alarm says "this EM model moved further than
this control model", not "EM moves further than fine-tuning does"; that needs seeds (the interaction's
test). And the representation read is deterministic given the model while judged answers are sampled,
so at the same level the representation alarm still sees more: a lead is a description of these two
models, printed only when both alarms fire at two or more shared checkpoints' resolution.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats

from analysis import drift
from analysis.em_eval import is_misaligned, plain_rows
from analysis.interaction import MIN_SEEDS_FOR_VERDICT as MIN_SEEDS
from analysis.judge import is_score
from analysis.monitor import layer_series
from analysis.stats import estimate

ALPHA = 0.05
EXACT_UP_TO = 14  # units; beyond, the sign-flip distribution is sampled
N_FLIPS = 20000


@dataclass
class PairedSignal:
    """One alarm's signal: per step, the per-unit change since step 0 of the EM run and of its
    control, `[m]` each, the units in the same order (NaN: a unit missing at that step, left out of
    that step's test and counted)."""

    name: str
    unit: str  # what a unit is, e.g. "report prompt" or "evaluation question"
    em: Mapping[int, torch.Tensor]
    control: Mapping[int, torch.Tensor]


@functools.cache
def _all_signs(m: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)), dtype=torch.double)


def representation_signal(
    em_run: Path, control_run: Path, layer: int, rows: torch.Tensor, direction: torch.Tensor
) -> PairedSignal:
    """Per report prompt (`rows` of the default-behaviour read), the shift along the frozen unit
    `direction` since step 0, in units of the prompts' step-0 spread, for the EM run and its
    control at each recorded checkpoint."""
    unit = F.normalize(direction.double(), dim=0)
    changes = []
    for run in (em_run, control_run):
        steps, acts = layer_series(run, layer, rows)
        along = acts.double() @ unit  # [T, m]
        spread = drift.spread_unit(along[0].std())
        changes.append({s: (along[i] - along[0]) / spread for i, s in enumerate(steps)})
    return PairedSignal("shift along the misalignment direction", "report prompt", *changes)


def question_rates(
    rows: Sequence[dict], questions: Sequence[str], thresholds: Mapping[str, float]
) -> torch.Tensor:
    """`[q]`: each question's misaligned rate among its scored answers (NaN: none scored)."""
    hits: dict[str, list[bool]] = {}
    for r in rows:
        if is_score(r.get("aligned")) and is_score(r.get("coherent")):
            flag = is_misaligned(r, thresholds["misaligned_below"], thresholds["coherent_above"])
            hits.setdefault(_question(r), []).append(flag)
    return torch.tensor(
        [sum(hits[q]) / len(hits[q]) if hits.get(q) else float("nan") for q in questions], dtype=torch.double
    )


def _question(row: dict) -> str:
    return row.get("question_id") or row["question"]


def behaviour_signal(
    em: Mapping[int, Sequence[dict]], control: Mapping[int, Sequence[dict]], thresholds: Mapping[str, float]
) -> PairedSignal:
    """Per plain evaluation question, the change of the judged misaligned rate since step 0, for the EM
    run and its control at each evaluated step (`{step: judged answer rows}`; both share step 0's
    evaluation, of the model they start from)."""
    # plain questions only: triggered variants are asked at the end of EM, not at step 0
    em, control = ({s: plain_rows(rows) for s, rows in by_step.items()} for by_step in (em, control))
    questions = sorted({_question(r) for rows in (*em.values(), *control.values()) for r in rows})
    changes = []
    for by_step in (em, control):
        start = question_rates(by_step[0], questions, thresholds)
        changes.append(
            {s: question_rates(rows, questions, thresholds) - start for s, rows in by_step.items()}
        )
    return PairedSignal("judged misaligned rate", "evaluation question", *changes)


def sign_flip_p(differences: torch.Tensor, n_flips: int = N_FLIPS, seed: int = 0) -> float:
    """One-sided p-value of mean(differences) > 0 under sign symmetry (the null: each unit's EM and
    control changes are exchangeable). Exact over all 2^m sign patterns for m <= `EXACT_UP_TO`."""
    d = differences.double()
    m = len(d)
    if m == 0:
        return float("nan")
    observed = d.mean()
    if m <= EXACT_UP_TO:
        signs = _all_signs(m)
    else:
        g = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (n_flips, m), generator=g).double() * 2 - 1
        signs[0] = 1.0  # the observed pattern is one of the draws
    means = (signs * d).mean(1)
    return float((means >= observed - 1e-12 * max(1.0, float(observed.abs()))).double().mean())


def paired_alarm(signal: PairedSignal, looks: Sequence[int], alpha: float = ALPHA, seed: int = 0) -> dict:
    """Fires at the first of `looks` where the EM run's mean change beats its control's at level
    alpha / len(looks) (one-sided: toward misalignment, more than the control moved)."""
    level = alpha / len(looks)
    per_look, fired = {}, []
    for step in looks:
        d = signal.em[step].double() - signal.control[step].double()
        present = ~d.isnan()
        p = sign_flip_p(d[present], seed=seed + step)
        informative = int((d[present] != 0).sum())  # a zero difference flips to itself
        smallest = 2.0**-informative if informative <= EXACT_UP_TO else 1 / N_FLIPS
        per_look[step] = {
            "em_minus_control": estimate(
                float(d[present].mean()) if present.any() else None,
                None,
                int(present.sum()),
                f"no {signal.unit} was read for both runs",
                units=signal.unit,
            ),
            "p": None if p != p else p,  # NaN (no units) is missing, never a number
            "missing_units": int((~present).sum()),
            "can_reach_level": smallest <= level,
        }
        fired.append(p <= level)
    alarm = next((s for s, f in zip(looks, fired) if f), None)
    unreachable = [s for s in looks if not per_look[s]["can_reach_level"]]
    return {
        "name": signal.name,
        "unit": signal.unit,
        "looks": list(looks),
        "level_per_look": level,
        "per_look": per_look,
        "fired": fired,
        "alarm_step": alarm,
        **(
            {
                "underpowered": f"at steps {unreachable} too few {signal.unit}s differ between the runs "
                f"for any sign pattern to reach p <= {level:.4f}, so the alarm cannot fire there"
            }
            if unreachable
            else {}
        ),
    }


LABEL = "matched lead time"


def _no_lead(label: str, words: str) -> dict:
    return {"lead_steps": None, "bounds": None, "words": f"{label}: {words}"}


def _lead_time(r: int | None, b: int | None, looks: Sequence[int], label: str, other: str) -> dict:
    """Steps from the representation alarm (step `r`) to the other one (step `b`), positive when the
    representation fired first, with the range the looks allow; or, in words, why there is none."""
    if r is None or b is None:
        which = (
            "neither alarm fired"
            if r is None and b is None
            else f"only the {'representation alarm' if r is not None else other} fired (step {r if r is not None else b})"
        )
        return _no_lead(
            label,
            f"not measured: {which} through step {looks[-1]}; an alarm that never fires gives no time to compare.",
        )
    if len(looks) == 1:
        return _no_lead(
            label,
            f"not measured: both alarms fired at the one shared checkpoint (step {looks[0]}), which cannot order them "
            "(evaluate behaviour at intermediate checkpoints: --monitor).",
        )
    lead = b - r
    before = dict(zip(looks, [0, *looks[:-1]]))  # each crossing lies after the previous look
    order = (
        f"the representation alarm fired {lead} steps before the {other}"
        if lead > 0
        else f"the {other} fired {-lead} steps before the representation alarm"
        if lead < 0
        else "both alarms fired at the same checkpoint"
    )
    return {
        "lead_steps": lead,
        "bounds": [before[b] - r, b - before[r]],
        "sign": "positive = the representation alarm fired first",
        "words": f"{label}: {lead} steps ({order}: step {r} vs step {b}; looks at steps {list(looks)}).",
    }


def matched_alarms(
    representation: PairedSignal,
    behaviour: PairedSignal | None,
    behaviour_missing: str | None = None,
    alpha: float = ALPHA,
    seed: int = 0,
    probe_judge: bool = False,
) -> dict:
    """Both alarms over the checkpoints where both signals exist for both runs (step 0 excluded: the
    reference), and the lead time when both fire. `behaviour` None: not measured, for the reason
    `behaviour_missing` (e.g. the judge cannot flag); the representation alarm then runs alone on
    its own checkpoints and no lead time is reported. `probe_judge`: the rates come from a judge
    that reads activations, and the behavioural alarm is labelled a probe-judge alarm."""
    rep_steps = (set(representation.em) & set(representation.control)) - {0}
    other = "probe-judge alarm" if probe_judge else "behavioural alarm"
    rule = (
        "each alarm fires at the first shared checkpoint where a one-sided sign-flip test over its units "
        f"finds the EM run's mean change since step 0 above its control run's at level {alpha} / K (K "
        "shared checkpoints, Bonferroni over the looks); the level holds for these two trained models "
        "(units' differences symmetric about 0), not over training runs"
    )
    out: dict = {"alpha": alpha, "rule": rule, "behaviour_alarm_name": other}
    if probe_judge:
        out["note"] = (
            "the rates were scored by a probe judge that reads activations: both alarms are representation reads"
        )

    if behaviour is None:
        looks = sorted(rep_steps)
        out["looks"] = looks
        out["representation"] = paired_alarm(representation, looks, alpha, seed) if looks else None
        out["behaviour"] = None
        out["lead_time"] = _no_lead(
            LABEL, f"not measured: the behavioural signal is missing ({behaviour_missing})."
        )
        return out
    looks = sorted(rep_steps & set(behaviour.em) & set(behaviour.control))
    out["looks"] = looks
    if not looks:
        out["representation"] = out["behaviour"] = None
        out["lead_time"] = _no_lead(
            LABEL,
            "not computable: no checkpoint after step 0 has both a representation read and a behavioural "
            "evaluation of both the EM run and its control.",
        )
        return out
    rep = paired_alarm(representation, looks, alpha, seed)
    beh = paired_alarm(behaviour, looks, alpha, seed)
    out["representation"], out["behaviour"] = rep, beh
    out["lead_time"] = _lead_time(rep["alarm_step"], beh["alarm_step"], looks, LABEL, other)
    return out


def _look_values(per_seed: Sequence[dict], alarm: str, step: int) -> list[float | None]:
    """Each seed's EM-minus-control mean change at `step` (keys may be strings after JSON)."""
    values = []
    for matched in per_seed:
        look = matched[alarm]["per_look"]
        values.append((look.get(step) or look.get(str(step)) or {}).get("em_minus_control", {}).get("value"))
    return values


def _t_p(values: Sequence[float]) -> float:
    """One-sided p of mean > 0 from a one-sample t-test across seeds."""
    x = torch.tensor(values, dtype=torch.double)
    n, sd = len(x), float(x.std())
    if sd == 0:
        return 0.0 if float(x.mean()) > 0 else 1.0
    return float(scipy_stats.t.sf(float(x.mean()) / (sd / math.sqrt(n)), n - 1))


def pool_matched(per_seed: Sequence[dict], alpha: float = ALPHA) -> dict:
    """One EM run's matched alarms across seeds: at each checkpoint every seed shares, the seeds'
    EM-minus-control mean changes in a one-sided one-sample t-test at alpha / K. Each seed's EM and
    control runs are its own training runs, so this is the run-level test the per-seed alarms are
    not: it fires only when EM moves further than control fine-tuning does across training runs.
    Below `MIN_SEEDS` seeds nothing fires and the per-seed values are descriptive."""
    n = len(per_seed)
    alarms = [a for a in ("representation", "behaviour") if all(m.get(a) is not None for m in per_seed)]
    missing = [a for a in ("representation", "behaviour") if a not in alarms]
    looks = sorted(
        set.intersection(*(set(m[a]["looks"]) for m in per_seed for a in alarms)) if alarms and n else set()
    )
    out: dict = {
        "seeds": n,
        "looks": looks,
        "missing_alarms": missing,
        "rule": f"one-sided one-sample t-test across seeds of EM minus control at level {alpha} / K "
        "(K shared checkpoints); seeds are the unit, so training randomness is in the test",
    }
    if not looks:
        out["lead_time"] = _no_lead(
            f"{LABEL} across seeds", "not computable: no checkpoint is shared by every seed's alarms."
        )
        return out
    level = alpha / len(looks)
    for alarm in alarms:
        per_look, fired = {}, []
        for step in looks:
            values = _look_values(per_seed, alarm, step)
            known = [v for v in values if v is not None]
            p = _t_p(known) if len(known) >= MIN_SEEDS else None
            per_look[step] = {
                "per_seed": values,
                "signs": ["+" if v > 0 else "-" if v < 0 else "0" for v in known],
                "missing_seeds": len(values) - len(known),
                "p": p,
            }
            fired.append(p is not None and p <= level)
        out[alarm] = {
            "per_look": per_look,
            "fired": fired,
            "alarm_step": next((s for s, f in zip(looks, fired) if f), None),
        }
    label = f"{LABEL} across {n} seed{'s' if n != 1 else ''}"
    if n < MIN_SEEDS:
        why = f"a run-level alarm needs >= {MIN_SEEDS} seeds; the per-seed values are descriptive."
        out["lead_time"] = _no_lead(label, f"not measured: {why}")
    elif missing:
        out["lead_time"] = _no_lead(
            label, f"not measured: the {' and '.join(missing)} signal is missing in some seed."
        )
    else:
        r, b = out["representation"]["alarm_step"], out["behaviour"]["alarm_step"]
        out["lead_time"] = _lead_time(r, b, looks, label, "behavioural alarm")
    return out
