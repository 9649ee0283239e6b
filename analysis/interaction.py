"""The experiment's question as an interaction, and what may be said of it.

Does character training make the persona resist EM *beyond what any fine-tuning does*? Four EM runs
from one recipe answer it (the 2x2: starting model x data):

    interaction = (persona.corrupted - persona.control) - (base.corrupted - base.control)

Each term is a cell's movement of default behaviour along a direction by the end of fine-tuning
(end mean minus start mean of the report-half prompts' projections on the unit direction), in one
unit for all four cells: the spread of the two starting models' default behaviour along the
direction (the root of their mean variance). The simple effects (persona.corrupted - base.corrupted,
persona.corrupted - persona.control, ...) are kept beside it under their own names; none of them is
the interaction, and only the interaction answers the question.

Signs: along the misalignment direction, the anchor hypothesis predicts an interaction below 0 (EM
moves the persona model toward misalignment less than it moves the base model, beyond control data);
along the persona direction it predicts one above 0 (EM pulls the persona model off its persona less
than it moves the base model along that axis).

Seeds are the unit of inference: a verdict comes only from a test across >= 3 seeds (the per-seed
values and their signs shown beside it); with fewer, every number is descriptive, the within-run
bootstrap over prompts is a descriptive interval, and no verdict word is printed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats

from analysis import drift
from analysis.stats import across_seeds, estimate, unmeasured

# the 2x2's cells: (starting model, data) -> the run's name in a tracked run (`analysis.drift_report.RUNS`)
CELLS = {
    ("persona", "corrupted"): "persona",
    ("persona", "control"): "control",
    ("base", "corrupted"): "base",
    ("base", "control"): "base_control",
}
PREDICTED_SIGN = {"persona": +1, "misalignment": -1}  # the anchor hypothesis, per direction
MIN_SEEDS_FOR_VERDICT = 3
VERDICT_WORDS = ("exceeds", "exceeded", "separated", "resists", "resisted")
DESCRIPTIVE = (
    "descriptive: with {n} seed(s) training randomness is not sampled (seeds are the unit of inference; "
    "a verdict needs >= 3), so intervals resample prompts within the run(s) and support no verdict"
)


def cell_movements(
    reads: Mapping[str, tuple[torch.Tensor, torch.Tensor]], direction: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`reads[run] = (start, end)`, each `[m, L, d]` (the same m prompts in every run); `direction`
    `[L, d]`. Returns each run's `[m, L]` per-prompt movement along the unit direction, in the
    common unit (the starting models' pooled spread), so cells and their differences compare."""
    unit = F.normalize(direction.double(), dim=-1)
    project = lambda x: torch.einsum("mld,ld->ml", x.double(), unit)  # noqa: E731
    starts = {"persona": project(reads[CELLS["persona", "corrupted"]][0]), "base": project(reads["base"][0])}
    spread = drift.spread_unit(torch.sqrt((starts["persona"].var(0) + starts["base"].var(0)) / 2))  # [L]
    return {run: (project(end) - project(start)) / spread for run, (start, end) in reads.items()}


def interaction_terms(moves: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The interaction and the simple effects, each `[L]` (the means over prompts of `[m, L]`
    movements) or `[B, L]` when given bootstrap means."""
    p_em, p_ctl = moves[CELLS["persona", "corrupted"]], moves[CELLS["persona", "control"]]
    b_em, b_ctl = moves[CELLS["base", "corrupted"]], moves[CELLS["base", "control"]]
    return {
        "interaction": (p_em - p_ctl) - (b_em - b_ctl),
        "corrupted_vs_control_in_persona": p_em - p_ctl,
        "corrupted_vs_control_in_base": b_em - b_ctl,
        "persona_vs_base_on_corrupted": p_em - b_em,
        "persona_vs_base_on_control": p_ctl - b_ctl,
    }


def interaction(
    reads: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    direction: torch.Tensor,
    layer: int,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """One seed's interaction along `direction`: every term per layer, and at `layer` as an
    estimate whose interval is the bootstrap over prompts (resampled jointly across the four runs,
    which read the same prompts): a descriptive interval, n = 1 seed."""
    missing = [run for run in CELLS.values() if run not in reads]
    if missing:
        raise ValueError(f"the 2x2 needs the runs {sorted(CELLS.values())}; missing {missing}")
    moves = cell_movements(reads, direction)
    means = {run: m.mean(0) for run, m in moves.items()}  # [L]
    m = next(iter(moves.values())).shape[0]
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(m, (n_boot, m), generator=g)
    boots = interaction_terms({run: mv[rows].mean(1) for run, mv in moves.items()})  # [B, L]
    out: dict = {"by_layer": {k: v.tolist() for k, v in interaction_terms(means).items()}, "layer": layer}
    for key, values in interaction_terms(means).items():
        ci = torch.quantile(boots[key][:, layer], torch.tensor([0.025, 0.975], dtype=torch.double))
        out[key] = estimate(
            float(values[layer]),
            ci.tolist(),
            1,
            interval="bootstrap over prompts within one seed (descriptive)",
            prompts=m,
        )
    return out


def pooled_layer(selection_by_seed: Sequence[Sequence[float]]) -> int:
    """One layer for every seed: the argmax of the layer-selection score averaged over the seeds'
    selection halves (never each seed's own choice)."""
    scores = torch.tensor([list(s) for s in selection_by_seed], dtype=torch.double)
    return int(scores.mean(0).argmax())


def minimum_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean a two-sided one-sample t-test across n seeds detects with `power`,
    given the seeds' standard deviation `sd` (None below 2 seeds, where there is no sd)."""
    if n < 2 or not sd == sd:
        return None
    df = n - 1
    return float((scipy_stats.t.ppf(1 - alpha / 2, df) + scipy_stats.t.ppf(power, df)) * sd / math.sqrt(n))


def pool_interaction(per_seed: Sequence[Mapping], layer: int, direction: str) -> dict:
    """Each term at the one pooled `layer` across seeds (mean, t-interval, n = seeds), with the
    per-seed values and signs, the minimum detectable interaction, and, with >= 3 seeds only, a
    verdict from the t-test across seeds."""
    values = [float(s["by_layer"]["interaction"][layer]) for s in per_seed]
    n = len(values)
    pooled = {
        key: {
            **across_seeds([float(s["by_layer"][key][layer]) for s in per_seed]),
            "per_seed": [float(s["by_layer"][key][layer]) for s in per_seed],
        }
        for key in per_seed[0]["by_layer"]
    }
    sd = float(torch.tensor(values, dtype=torch.double).std()) if n > 1 else float("nan")
    head = pooled["interaction"]
    head["signs"] = ["+" if v > 0 else "-" if v < 0 else "0" for v in values]
    head["minimum_detectable"] = minimum_detectable(sd, n)
    head["verdict"] = verdict(values, direction)
    return {"layer": layer, **pooled}


def verdict(values: Sequence[float], direction: str) -> dict:
    """The test across seeds: with < 3 seeds no verdict (descriptive); else a two-sided one-sample
    t-test of the per-seed interactions against 0, and whether its sign is the one the anchor
    hypothesis predicts along `direction`."""
    n = len(values)
    if n < MIN_SEEDS_FOR_VERDICT:
        return {"words": None, "descriptive": DESCRIPTIVE.format(n=n), "p": None, "n": n}
    x = torch.tensor(values, dtype=torch.double)
    t = (
        float(x.mean() / (x.std() / math.sqrt(n)))
        if float(x.std()) > 0
        else math.copysign(math.inf, float(x.mean()))
    )
    p = float(2 * scipy_stats.t.sf(abs(t), n - 1))
    predicted = PREDICTED_SIGN[direction]
    if p < 0.05 and math.copysign(1, t) == predicted:
        words = f"the persona resists EM along the {direction} direction beyond control fine-tuning"
    elif p < 0.05:
        words = f"the interaction along the {direction} direction is against the anchor hypothesis's sign"
    else:
        words = f"no interaction along the {direction} direction is supported at {n} seeds"
    return {"words": words, "t": t, "p": p, "n": n, "predicted_sign": "+" if predicted > 0 else "-"}


def interaction_rows(pooled: Mapping[str, Mapping]) -> list[list]:
    """The report's first table: one row per direction (the pooled layer's interaction), with its
    per-seed values and what may be said of it."""
    rows = []
    for direction, result in pooled.items():
        head = result["interaction"]
        low, high = head["ci95"] if head.get("ci95") else (None, None)
        measured = head["value"] is not None
        said = (head["verdict"]["words"] or head["verdict"]["descriptive"]) if measured else head["reason"]
        rows.append(
            [
                direction,
                result["layer"],
                _fmt(head["value"]),
                f"[{_fmt(low)}, {_fmt(high)}]",
                head["n"],
                ", ".join(_fmt(v) for v in head["per_seed"]) if measured else "n/a",
                _fmt(head.get("minimum_detectable")),
                said,
            ]
        )
    return rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:+.3f}"


def not_interpretable(pooled: dict, reason: str | None) -> dict:
    """Pooled interactions (direction -> `pool_interaction`'s result) with the persona direction's
    marked not interpretable when `reason` says that direction may be noise (its contrast probe at
    chance); the misalignment direction does not come from the contrast set and keeps its numbers."""
    if reason is None or "persona" not in pooled:
        return pooled
    head = pooled["persona"]["interaction"]
    marked = {**head, **unmeasured(head["n"], f"not interpretable: {reason}")}
    return {**pooled, "persona": {**pooled["persona"], "interaction": marked}}
