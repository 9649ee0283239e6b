"""Projections of activations onto persona directions, with bootstrap intervals: the basic
measurement behind "does this model sit further along the persona axis than that one?"."""

from __future__ import annotations

import torch


def project(acts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """`[n, L, d]` onto per-layer directions `[L, d]` (normalised here) -> `[n, L]`."""
    unit = torch.nn.functional.normalize(directions.float(), dim=-1)
    return torch.einsum("nld,ld->nl", acts.float(), unit)


def bootstrap_mean_difference(
    a: torch.Tensor, b: torch.Tensor, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a percentile bootstrap interval (independent resampling of a and b)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the bootstrap needs at least two values on each side")
    g = torch.Generator().manual_seed(seed)
    a, b = a.double(), b.double()
    boots = a[torch.randint(len(a), (n_boot, len(a)), generator=g)].mean(1) - b[
        torch.randint(len(b), (n_boot, len(b)), generator=g)
    ].mean(1)
    tail = (1 - confidence) / 2
    lo, hi = torch.quantile(boots, torch.tensor([tail, 1 - tail], dtype=torch.double)).tolist()
    return float(a.mean() - b.mean()), lo, hi
