"""The one seed driver: seeds are the unit of inference, so every experiment that runs several
(the main job, the defences harness, the diversity sweep) runs them the same way and keeps them in
the same places."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from analysis.experiments.options import TrackConfig, default_out
from anchor.inputs import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class SeedPlan:
    seeds: tuple[int, ...]
    runs: tuple[Path, ...]  # one run folder per seed
    pooled: Path  # where results pooled over the seeds go


def plan_seeds(config: TrackConfig, seeds: Sequence[int], out: str | Path | None, what: str = "") -> SeedPlan:
    """Under `--out`, each seed's run in `<out>/s<seed>` and the pooled results in `<out>`; without
    it, each seed's run where a one-seed run would be (so a finished seed is reused) and the pooled
    results beside them in `runs/<...>-seeds<a>-<b>...<what>`."""
    seeds = tuple(seeds)
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {list(seeds)}: each seed once")
    if out is not None:
        out = Path(out)
        return SeedPlan(seeds, tuple(out / f"s{s}" for s in seeds), out)
    single = default_out(config)
    tag = f"-seeds{'-'.join(map(str, seeds))}{what}"
    pooled = single.with_name(single.name.replace(f"-s{config.seed}", tag, 1))
    return SeedPlan(seeds, tuple(default_out(replace(config, seed=s)) for s in seeds), pooled)


def run_seeds(
    config: TrackConfig, plan: SeedPlan, job: Callable[[TrackConfig, Path], T], log=print
) -> list[T]:
    """`job(config reseeded, run folder)` once per seed, in seed order; each seed reruns everything
    the seed reaches (character training, contrast set, EM, evaluation)."""
    results = []
    for seed, run in zip(plan.seeds, plan.runs, strict=True):
        log(f"seed {seed}: {run}")
        results.append(job(replace(config, seed=seed), run))
    return results
