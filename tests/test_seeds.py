"""The one seed driver: where each seed's run and the pooled results live, and that each seed's job
gets its own reseeded config."""

from pathlib import Path

import pytest

from analysis.experiments.options import TrackConfig, default_out
from analysis.experiments.seeds import plan_seeds, run_seeds
from anchor.inputs import InputError


def test_seed_runs_live_under_out_or_where_one_seed_runs_would():
    config = TrackConfig(persona="humor")
    under = plan_seeds(config, [0, 1, 2], "runs/x")
    assert under.runs == (Path("runs/x/s0"), Path("runs/x/s1"), Path("runs/x/s2")) and under.pooled == Path(
        "runs/x"
    )
    beside = plan_seeds(config, [0, 2], None, what="-defences")
    assert beside.runs[1] == default_out(TrackConfig(persona="humor", seed=2))  # a finished seed is reused
    assert beside.pooled.name == "humor-default-insecure-seeds0-2-defences"
    with pytest.raises(InputError, match="each seed once"):
        plan_seeds(config, [1, 1], None)


def test_each_seed_gets_its_own_config_and_folder_in_order():
    config = TrackConfig(persona="humor", judge="hf:x", seed=7)
    plan = plan_seeds(config, [3, 1], "out")
    calls = run_seeds(config, plan, lambda seeded, run: (seeded.seed, seeded.judge, run), log=lambda _: None)
    assert calls == [(3, "hf:x", Path("out/s3")), (1, "hf:x", Path("out/s1"))]
