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
# Each drift figure, short name and the random null it is placed in (after the control run, its
# scientific null).
NULL_FIGURES = {
    "drift_auc_vs_matched_directions": ("drift AUC along the persona direction (item spreads)", "directions"),
    "anchor_change_vs_matched_directions": ("end-of-EM change along the persona direction", "directions"),
    "em_shift_cos_persona_vs_matched_directions": ("cos(shift, persona direction)", "directions"),
    "em_shift_cos_misalignment_vs_matched_directions": ("cos(shift, misalignment direction)", "directions"),
    "misalignment_movement_vs_matched_directions": (
        "movement toward misalignment (item spreads)",
        "directions",
    ),
    "direction_rotation_vs_shuffled_labels": ("rotation of the persona direction (1 - stability)", "labels"),
    "probe_transfer_vs_shuffled_labels": ("held-out probe accuracy after fine-tuning", "labels"),
    "subspace_loss_vs_shuffled_labels": ("loss of contrast-subspace overlap (1 - overlap)", "labels"),
}
RANDOM_NULLS = {
    "directions": "random directions matched to the figure's direction in spread",
    "labels": "refits with the contrast labels shuffled within questions",
}
# Each start model's fine-tune on the corrupted data, and on the control data: its first null.
START_PAIRS = {"persona": ("persona", "control"), "base": ("base", "base_control")}
NULL_HEADER = [
    "figure",
    "start",
    "after EM",
    "after control data",
    "EM - control",
    "EM: percentile in random null",
    "control: percentile in random null",
    "random null",
]
NULL_NOTE = (
    "Each figure is read first beside the same start model fine-tuned on the control data (the null for "
    "'EM did this'), then placed among random nulls: directions matched to the figure's direction in spread "
    "(a figure along an ordinary direction of the same spread sits near the 50th percentile), or refits on "
    "shuffled labels. Percentiles are in the effect's direction. Descriptive: a verdict about the "
    "experiment's question comes only from the interaction tested across >= 3 seeds."
)


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


def null_rows(nulls: Mapping[str, Mapping[str, Mapping]]) -> list[list[str]]:
    """The nulls grouped, one row per figure and start model: the EM run's figure beside its control
    run's (the control run first), then both runs' percentiles in the figure's random null. One
    seed's nulls (`value`, `percentile`) or pooled seeds' (`value_by_seed`, `percentile_by_seed`)."""
    rows = []
    for key, (name, kind) in NULL_FIGURES.items():
        for start, (em_run, control_run) in START_PAIRS.items():
            em = nulls.get(em_run, {}).get(key)
            if em is None:
                continue
            control = nulls.get(control_run, {}).get(key)
            em_values = _by_seed(em, "value")
            control_values = _by_seed(control, "value") if control else None
            rows.append(
                [
                    name,
                    start,
                    _values(em_values),
                    _values(control_values) if control else "no control run",
                    _values(_differences(em_values, control_values)) if control else "n/a",
                    _percentiles(em),
                    _percentiles(control) if control else "n/a",
                    RANDOM_NULLS[kind],
                ]
            )
    return rows


def null_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """The grouped nulls as lines for a terminal."""
    return [
        f"{figure} ({start}): EM {em}, control {control}, EM - control {diff}; percentile in its random null "
        f"EM {em_pct}, control {control_pct}"
        for figure, start, em, control, diff, em_pct, control_pct, _ in rows
    ]


def _by_seed(null: Mapping, field: str) -> list:
    return list(null[f"{field}_by_seed"]) if f"{field}_by_seed" in null else [null.get(field)]


def _differences(a: Sequence, b: Sequence | None) -> list:
    if b is None or len(a) != len(b):
        return [None]
    return [None if x is None or y is None else x - y for x, y in zip(a, b)]


def _values(xs: Sequence | None) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return "n/a" if xs[0] is None else _g(xs[0])
    known = [x for x in xs if x is not None and x == x]
    mean = _g(sum(known) / len(known)) if known else "n/a"
    return f"{mean} (by seed {_gs(xs)})"


def _percentiles(null: Mapping) -> str:
    percentiles = _by_seed(null, "percentile")
    above = _by_seed(null, "exceeds_95")
    where = ", ".join("n/a" if p is None or p != p else f"{p:.0f}" for p in percentiles)
    if len(percentiles) == 1:
        if null.get("value") is not None and null["value"] == null.get("null_median") == null.get(
            "null_threshold"
        ):
            # shuffling labels within a question of one pair cannot change the figure
            return "n/a (the null equals the figure: one pair per question)"
        return f"{where} ({'above' if above[0] else 'below'} its 95th)"
    return f"{where} (above its 95th in {sum(bool(x) for x in above)} of {len(above)} seeds)"


def _g(x: float) -> str:
    return f"{x:.4g}"


def _gs(xs: Sequence[float | None]) -> str:
    return "[" + ", ".join("n/a" if x is None else _g(x) for x in xs) + "]"


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
