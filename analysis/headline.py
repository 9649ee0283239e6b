"""The experiment's headline numbers, what their nulls say in words, and their pooling across seeds.

Every headline number is `{"value", "ci95", "n"}`: with one seed, n = 1 and the interval is the
bootstrap over questions; across seeds, n is the number of seeds and the interval a Student-t
interval over the seeds' values (never their [min, max]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from analysis.stats import across_seeds, estimate

RUN_NAMES = {
    "persona": "persona + EM",
    "base": "base + EM",
    "control": "persona + control data",
    "base_control": "base + control data",
}
NULL_FIGURES = {
    "drift_auc_vs_random_directions": "drift along the persona direction (drift AUC, in item spreads) "
    "against random directions u ~ N(0, Sigma)",
    "anchor_change_vs_random_directions": "the size of the end-of-EM change along the persona direction "
    "against random directions",
    "em_shift_cos_persona_vs_random_directions": "|cos(EM shift, persona direction)| against random directions",
    "em_shift_cos_misalignment_vs_random_directions": "cos(EM shift, misalignment direction) against random "
    "directions",
    "misalignment_movement_vs_random_directions": "movement of default behaviour toward misalignment "
    "against random directions",
    "direction_rotation_vs_shuffled_labels": "rotation of the persona direction (1 - stability) against "
    "refits with labels shuffled within questions",
    "probe_transfer_vs_shuffled_labels": "held-out probe accuracy after EM against probes fitted on "
    "shuffled labels",
    "subspace_loss_vs_shuffled_labels": "loss of contrast-subspace overlap (1 - overlap) against refits "
    "with shuffled labels",
}


def headline(drift_result: Mapping, behaviour: Mapping[str, Mapping]) -> dict:
    """One seed's headline numbers: the representation's (from `compute_drift`) and the
    misaligned rate of every evaluated model (its judge's interval)."""
    head = dict(drift_result["headline"])
    head["misaligned_rate"] = {
        name: _missing_as_none(metrics["misaligned_rate"]) for name, metrics in behaviour.items()
    }
    return head


def _missing_as_none(number: Mapping) -> dict:
    extra = {k: v for k, v in number.items() if k not in ("value", "ci95", "n", "reason")}
    return estimate(number["value"], number["ci95"], number.get("n"), number.get("reason"), **extra)


def null_sentences(nulls: Mapping[str, Mapping[str, Mapping]], layer: int) -> list[str]:
    """The nulls in words, one sentence per run and figure: where each figure falls in its null (in
    the effect's direction), as a percentile, above or below the 95th. Descriptive: a verdict about
    the experiment's question comes only from the interaction tested across >= 3 seeds."""
    lines = []
    for run, figures in nulls.items():
        for key, null in figures.items():
            percentile = null.get("percentile_by_seed") or [null["percentile"]]
            verdict = _verdict(null)
            where = ", ".join(f"{p:.0f}" for p in percentile if p is not None and p == p)
            size = (
                f"; figure {_g(null['value'])}, null median {_g(null['null_median'])}, null 95% point "
                f"{_g(null['null_threshold'])}"
                if "value" in null
                else f"; figure by seed {_gs(null['value_by_seed'])}, null 95% points {_gs(null['null_threshold_by_seed'])}"
                if "value_by_seed" in null
                else ""
            )
            blind = (
                " The null equals the figure: it does not depend on which answer of a pair was elicited "
                "(one pair per question), so it cannot show a persona-specific change here."
                if "value" in null and null["value"] == null["null_median"] == null["null_threshold"]
                else ""
            )
            lines.append(
                f"{RUN_NAMES.get(run, run)}: {NULL_FIGURES.get(key, key)} (layer {layer}) {verdict} "
                f"(percentile {where or 'n/a'} of {null['n_null']} null draws, {null['side']}{size}).{blind}"
            )
    return lines


def _g(x: float) -> str:
    return f"{x:.4g}"


def _gs(xs: Sequence[float | None]) -> str:
    return "[" + ", ".join("n/a" if x is None else _g(x) for x in xs) + "]"


def _verdict(null: Mapping) -> str:
    if "exceeds_95_by_seed" in null:
        by_seed = null["exceeds_95_by_seed"]
        return f"is above its null's 95th percentile in {sum(by_seed)} of {len(by_seed)} seeds"
    return (
        "is above its null's 95th percentile" if null["exceeds_95"] else "is below its null's 95th percentile"
    )


def pool_seeds(per_seed: Sequence[Mapping]) -> dict:
    """Headline numbers and nulls of several seeds' metrics.json: each number's mean with a
    t-interval over seeds (`n` = seeds), each null's percentile per seed."""
    heads = [m["headline"] for m in per_seed]
    pooled = _pool_tree(heads)
    nulls: dict = {}
    for run in per_seed[0]["nulls"]:
        nulls[run] = {}
        for key, first in per_seed[0]["nulls"][run].items():
            draws = [m["nulls"][run][key] for m in per_seed if key in m["nulls"].get(run, {})]
            nulls[run][key] = {
                "percentile_by_seed": [d["percentile"] for d in draws],
                "exceeds_95_by_seed": [bool(d["exceeds_95"]) for d in draws],
                "value_by_seed": [d.get("value") for d in draws],
                "null_threshold_by_seed": [d.get("null_threshold") for d in draws],
                "n_null": first["n_null"],
                "side": first["side"],
            }
    return {"headline": pooled, "nulls": nulls, "seeds": [m["seed"] for m in per_seed]}


def _pool_tree(trees: Sequence) -> object:
    first = trees[0]
    if isinstance(first, Mapping) and "value" in first and "ci95" in first:
        values = [t["value"] if t and t.get("value") is not None else math.nan for t in trees]
        return across_seeds(values)
    if isinstance(first, Mapping):
        return {k: _pool_tree([t[k] if t else None for t in trees]) for k in first}
    return None if first is None else first
