"""Intervals and nulls for every headline number: a bootstrap that respects clustering by question,
intervals across seeds, and a figure's percentile in its null distribution.

Answers to one question are not independent (they share the question), so resampling answers
treats n answers to 8 questions as n independent draws and gives intervals that are too narrow.
The clustered bootstrap resamples questions, then answers within each drawn question.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import torch
from scipy import stats as scipy_stats


def cluster_indices(clusters: Sequence[Hashable], n_boot: int, seed: int) -> list[torch.Tensor]:
    """`n_boot` two-stage resamples of row indices: clusters with replacement, then the rows of
    each drawn cluster with replacement (so a resample's length varies with the clusters drawn)."""
    groups: dict[Hashable, list[int]] = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    members = [torch.tensor(rows) for rows in groups.values()]
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(members), (n_boot, len(members)), generator=g)
    out = []
    for draw in draws.tolist():
        parts = [members[k][torch.randint(len(members[k]), (len(members[k]),), generator=g)] for k in draw]
        out.append(torch.cat(parts))
    return out


def cluster_bootstrap(
    statistic: Callable[..., float],
    *columns: torch.Tensor,
    clusters: Sequence[Hashable],
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(value, low, high): `statistic` of the columns (rows indexed jointly, along dim 0) and the
    2.5th/97.5th percentiles of its clustered-bootstrap distribution; NaNs with no rows."""
    if len(clusters) == 0:
        return math.nan, math.nan, math.nan
    value = float(statistic(*columns))
    boots = torch.tensor(
        [float(statistic(*(c[index] for c in columns))) for index in cluster_indices(clusters, n_boot, seed)],
        dtype=torch.double,
    )
    boots = boots[~boots.isnan()]
    if len(boots) == 0:
        return value, math.nan, math.nan
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    return value, lo, hi


def estimate(
    value: float | None,
    ci95: Sequence[float | None] | None,
    n: int | None,
    reason: str | None = None,
    **extra,
) -> dict:
    """The one shape every estimate has: `{"value", "ci95", "n"}` (n: seeds, or the rows a
    single-seed interval was drawn from, as `extra` says). A value that cannot be measured (None or
    NaN) is never a number: value and ci95 are null and `reason` says why. An interval that cannot
    be drawn (one seed) has null bounds beside a measured value."""
    measured = None if value is None else _num(value)
    if measured is None:
        return unmeasured(n, reason or "not defined on these data", **extra)
    low, high = (None, None) if ci95 is None else (_opt(ci95[0]), _opt(ci95[1]))
    return {"value": measured, "ci95": [low, high], "n": n, **extra}


def unmeasured(n: int | None, reason: str, **extra) -> dict:
    """An estimate that cannot be measured, with the reason."""
    return {"value": None, "ci95": None, "n": n, "reason": reason, **extra}


def bounds(number: dict) -> tuple[float | None, float | None]:
    """(low, high) of an estimate's interval; (None, None) where it has none."""
    ci95 = number.get("ci95")
    return (None, None) if ci95 is None else (ci95[0], ci95[1])


def _opt(x: float | None) -> float | None:
    return None if x is None else _num(x)


def across_seeds(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean over seeds with a Student-t interval (n - 1 degrees of freedom): with 2 seeds it is
    wide, as it should be; never the [min, max] of the seeds. A seed without a value (None or NaN) is
    not dropped silently: `missing_seeds` counts it and n counts only the seeds that have one."""
    known = [v for v in values if v is not None and v == v]
    missing = len(values) - len(known)
    extra = {"interval": "t across seeds", **({"missing_seeds": missing} if missing else {})}
    x = torch.tensor(known, dtype=torch.double)
    n = len(x)
    if n == 0:
        return unmeasured(0, "no seed has a value", **extra)
    mean = float(x.mean())
    if n == 1:
        return estimate(mean, None, 1, **extra)
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1) * x.std(unbiased=True) / math.sqrt(n))
    return estimate(mean, [mean - half, mean + half], n, **extra)


def null_percentile(real: float, null: Sequence[float] | torch.Tensor, side: str = "greater") -> dict:
    """Where the real figure falls in its null: the percentage of null draws below it (ties count
    half). `side` says which tail is the effect: "greater" (the effect makes the figure larger),
    "less" (smaller) or "two-sided" (the figure's magnitude, compared with |null|)."""
    null = torch.as_tensor(null, dtype=torch.double)
    null = null[~null.isnan()]
    if len(null) == 0 or real != real:
        return {"percentile": math.nan, "n_null": len(null), "side": side, "exceeds_95": False}
    x = float(real)
    if side == "two-sided":
        x, null = abs(x), null.abs()
    below = float((null < x).sum() + 0.5 * (null == x).sum())
    percentile = 100.0 * below / len(null)
    effect = percentile if side != "less" else 100.0 - percentile
    threshold = float(torch.quantile(null, 0.05 if side == "less" else 0.95))
    return {
        "percentile": percentile,
        "n_null": len(null),
        "side": side,
        "exceeds_95": effect > 95.0,
        "value": x,  # the real figure (its magnitude when two-sided), so the effect's size shows too
        "null_median": float(null.median()),
        "null_threshold": threshold,  # the null's 95% point in the effect's direction
    }


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of p-values; NaNs stay NaN and are not
    counted in the family."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
