"""Monitoring on constructed activations and rates, where the truth is known: the representation
alarm fires where a shift along the direction begins and not where only other directions move;
the behavioural alarm takes the stricter rule; the lead time counts steps and says in words when
an alarm never fired; a probe judge's lead is never called behavioural; the drift detector never
scores a run it was fitted on and says when it cannot be computed."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.monitor import (
    RunSeries,
    behavioural_alarm,
    checkpoint_features,
    drift_detector,
    layer_series,
    lead_time,
    percentile_ranks,
    representation_alarm,
)
from analysis.stats import null_percentile
from anchor.extract import Activations
from anchor.store import ActivationStore

D, M = 16, 40
STEPS = [0, 10, 20, 30, 40]
WATCHED, ELSEWHERE = 0, 1  # the monitored direction's axis and an unrelated one


def _unit(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def constructed_run(shift_axis: int, onset: int, amount: float = 1.0, seed: int = 0) -> torch.Tensor:
    """`[T, M, D]`: prompts whose mean moves `amount` per later checkpoint along `shift_axis` from
    step `onset` on, plus per-checkpoint noise that never touches the watched axis (so the watched
    direction's change is exactly the constructed shift)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(M, D, generator=g)
    out = []
    for k, step in enumerate(STEPS):
        noise = 0.05 * torch.randn(M, D, generator=g)
        noise[:, WATCHED] = 0.0
        moved = amount * max(0, k - STEPS.index(onset) + 1) if step >= onset else 0.0
        out.append(x0 + noise + moved * _unit(shift_axis))
    return torch.stack(out)


def rates(values: dict[int, tuple[float, float, float] | None]) -> dict[int, dict]:
    return {
        s: {"value": v[0], "ci95": [v[1], v[2]], "n": 100}
        if v
        else {"value": None, "ci95": [None, None], "n": 0}
        for s, v in values.items()
    }


BEHAVIOUR_AT_30 = rates(
    {
        0: (0.05, 0.02, 0.08),
        10: (0.07, 0.03, 0.11),
        20: (0.10, 0.06, 0.14),  # lower bound above step 0's value, not above its upper bound
        30: (0.20, 0.12, 0.28),
        40: (0.30, 0.22, 0.38),
    }
)
BEHAVIOUR_NEVER = rates({0: (0.05, 0.02, 0.08), 20: (0.06, 0.03, 0.09), 40: (0.07, 0.04, 0.10)})


# ---------------------------------------------------------------- representation alarm


def test_alarm_fires_where_the_shift_along_the_direction_begins():
    alarm = representation_alarm(
        constructed_run(WATCHED, onset=10), STEPS, {"persona": _unit(WATCHED)}, layer=3
    )
    d = alarm["directions"]["persona"]
    assert d["alarm_step"] == 10 and alarm["alarm_step"] == 10 and alarm["alarm_directions"] == ["persona"]
    assert d["fired"] == [False, True, True, True, True]
    assert d["percentile"][0] == pytest.approx(50.0)  # step 0: no change anywhere, all ties
    assert min(d["percentile"][1:]) > 95.0
    assert d["standardised_change"][1] > 0.5
    assert "one layer" in alarm["correction"] and "no correction across layers" in alarm["correction"]
    assert alarm["layer"] == 3 and alarm["n_null"] == 200


def test_alarm_does_not_fire_when_only_other_directions_move():
    alarm = representation_alarm(constructed_run(ELSEWHERE, onset=10), STEPS, {"persona": _unit(WATCHED)})
    d = alarm["directions"]["persona"]
    assert d["alarm_step"] is None and alarm["alarm_step"] is None
    assert max(d["percentile"][1:]) < 50.0  # no change along the direction while the null's move
    assert max(abs(x) for x in d["standardised_change"]) < 1e-6


def test_signed_side_fires_only_toward_the_stated_end():
    away = constructed_run(WATCHED, onset=20, amount=-1.0)
    toward = representation_alarm(away, STEPS, {"m": _unit(WATCHED)}, sides={"m": "greater"})
    against = representation_alarm(away, STEPS, {"m": _unit(WATCHED)}, sides={"m": "less"})
    magnitude = representation_alarm(away, STEPS, {"m": _unit(WATCHED)})
    assert toward["alarm_step"] is None
    assert against["alarm_step"] == 20 and magnitude["alarm_step"] == 20
    assert "signed" in toward["directions"]["m"]["side_meaning"]
    assert "magnitude" in magnitude["directions"]["m"]["side_meaning"]


def test_bonferroni_raises_the_threshold_and_lowers_the_null_false_alarm_rate():
    acts = constructed_run(ELSEWHERE, onset=10)
    dirs = {"a": _unit(WATCHED), "b": _unit(ELSEWHERE), "c": _unit(2)}
    plain = representation_alarm(acts, STEPS, dirs)
    strict = representation_alarm(acts, STEPS, dirs, bonferroni=True)
    assert plain["threshold_percentile"] == pytest.approx(95.0)
    assert strict["threshold_percentile"] == pytest.approx(100 * (1 - 0.05 / 3))
    assert "Bonferroni" in strict["correction"] and "no correction over the 3" in plain["correction"]
    rate = lambda a: a["directions"]["a"]["null_false_alarm_rate"]  # noqa: E731
    assert 0.0 < rate(strict) < rate(plain)
    assert rate(plain) >= 0.05  # several looks: at least the one-look rate
    assert plain["alarm_directions"] == ["b"]  # the axis that moved


def test_percentile_ranks_agree_with_null_percentile():
    g = torch.Generator().manual_seed(1)
    null = torch.randn(50, generator=g).double()
    values = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.9], dtype=torch.double)
    for side in ("greater", "less", "two-sided"):
        got = percentile_ranks(values, null, side)
        want = [null_percentile(float(v), null, side)["percentile"] for v in values]
        assert got.tolist() == pytest.approx(want)


def test_a_side_for_an_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="not among the directions"):
        representation_alarm(constructed_run(WATCHED, 10), STEPS, {"p": _unit(0)}, sides={"q": "greater"})


# ---------------------------------------------------------------- behavioural alarm


def test_behavioural_alarm_takes_the_stricter_rule_and_skips_missing_rates():
    with_gap = {**BEHAVIOUR_AT_30, **rates({25: None})}
    alarm = behavioural_alarm(with_gap, "hf:Qwen/Qwen2.5-7B-Instruct")
    assert alarm["alarm_step"] == 30  # step 20's lower bound (0.06) beats step 0's value, not its upper bound
    assert alarm["previous_evaluated_step"] == 20
    assert alarm["skipped_steps"] == [25] and 25 not in alarm["evaluated_steps"]
    assert alarm["judge_kind"] == "hf" and not alarm["probe_judge"]
    assert "upper bound" in alarm["rule"] and alarm["alarm_name"] == "behavioural alarm"


def test_behavioural_alarm_needs_step_zero():
    with pytest.raises(ValueError, match="step 0"):
        behavioural_alarm(rates({10: (0.1, 0.05, 0.15), 20: (0.3, 0.2, 0.4)}), "hf")


# ---------------------------------------------------------------- lead time


def test_lead_time_of_representation_at_10_and_behaviour_at_30_is_20():
    rep = representation_alarm(constructed_run(WATCHED, onset=10), STEPS, {"persona": _unit(WATCHED)})
    lead = lead_time(rep, behavioural_alarm(BEHAVIOUR_AT_30, "openai:gpt-4o"))
    assert lead["representation_alarm_step"] == 10 and lead["behaviour_alarm_step"] == 30
    assert lead["lead_steps"] == 20 and lead["label"] == "behavioural lead time"
    assert lead["bounds"] == [10, 30]  # crossings in (0, 10] and (20, 30]
    assert "20 steps" in lead["words"] and "before the behavioural alarm" in lead["words"]
    json.dumps(lead)


def test_behaviour_first_gives_a_negative_lead():
    rep = representation_alarm(constructed_run(WATCHED, onset=40), STEPS, {"persona": _unit(WATCHED)})
    lead = lead_time(rep, behavioural_alarm(BEHAVIOUR_AT_30, "hf"))
    assert lead["lead_steps"] == -10 and "fired 10 steps before the representation alarm" in lead["words"]


def test_an_alarm_that_never_fired_is_said_in_words():
    """Lead time is measured only when both alarms fire: one alarm alone is "not measured", never a
    lead "by more than N steps" (the silent alarm may only be the less sensitive one)."""
    fired = representation_alarm(constructed_run(WATCHED, onset=10), STEPS, {"persona": _unit(WATCHED)})
    silent = representation_alarm(constructed_run(ELSEWHERE, onset=10), STEPS, {"persona": _unit(WATCHED)})
    no_behaviour = lead_time(fired, behavioural_alarm(BEHAVIOUR_NEVER, "hf"))
    assert no_behaviour["lead_steps"] is None and "lower_bound" not in no_behaviour
    assert "not measured" in no_behaviour["words"] and "leads" not in no_behaviour["words"]
    assert "behavioural alarm never fired through step 40" in no_behaviour["words"]
    no_representation = lead_time(silent, behavioural_alarm(BEHAVIOUR_AT_30, "hf"))
    assert no_representation["lead_steps"] is None
    assert "representation alarm never fired" in no_representation["words"]
    neither = lead_time(silent, behavioural_alarm(BEHAVIOUR_NEVER, "hf"))
    assert neither["lead_steps"] is None and "neither alarm fired" in neither["words"]


def test_a_probe_judge_lead_is_never_called_behavioural():
    rep = representation_alarm(constructed_run(WATCHED, onset=10), STEPS, {"persona": _unit(WATCHED)})
    behaviour = behavioural_alarm(BEHAVIOUR_AT_30, "probe:runs/x/directions.safetensors")
    assert behaviour["probe_judge"] and behaviour["alarm_name"] == "probe-judge alarm" and "note" in behaviour
    for b in (behaviour, behavioural_alarm(BEHAVIOUR_NEVER, "probe")):
        lead = lead_time(rep, b)
        assert lead["label"] == "representation vs probe-judge lead" and "note" in lead
        assert "behavioural lead" not in json.dumps(lead).lower()
        assert "behavioural alarm" not in lead["words"]
    assert lead_time(rep, behaviour)["lead_steps"] == 20


# ---------------------------------------------------------------- drift detector


def series(name: str, seed: int, em: bool, axis: int, noise_seed: int, t: int = 6) -> RunSeries:
    """Features `[t, 3]` growing along `axis` with training, plus noise; row 0 (step 0) all zeros."""
    g = torch.Generator().manual_seed(noise_seed)
    growth = torch.arange(t, dtype=torch.float32)[:, None] * torch.eye(3)[axis]
    features = growth + 0.3 * torch.randn(t, 3, generator=g)
    features[0] = 0.0
    return RunSeries(name, seed, em, list(range(0, 10 * t, 10)), features)


def four_runs(flip_test_seed: bool = False) -> list[RunSeries]:
    """EM runs drift along feature 0 and controls along feature 1; with `flip_test_seed`, seed 1's
    runs swap axes, so a classifier scored on its own training runs would still look perfect."""
    em1, ctl1 = (1, 0) if flip_test_seed else (0, 1)
    return [
        series("em_s0", 0, True, 0, 1),
        series("control_s0", 0, False, 1, 2),
        series("em_s1", 1, True, em1, 3),
        series("control_s1", 1, False, ctl1, 4),
    ]


def test_detector_separates_em_from_control_on_a_held_out_seed():
    out = drift_detector(four_runs(), ["shift_persona", "shift_misalignment", "shift_norm"], n_boot=200)
    assert (
        out["value"] > 0.9 and out["ci95"][0] is not None and out["ci95"][0] <= out["value"] <= out["ci95"][1]
    )
    assert out["n"] == 10 and out["clusters"] == 2  # 5 checkpoints after step 0, two test runs
    assert out["train_seeds"] == [0] and out["test_seeds"] == [1]
    assert out["train_runs"] == ["control_s0", "em_s0"] and out["test_runs"] == ["control_s1", "em_s1"]
    assert out["weights"][0] > 0 > out["weights"][1]  # EM along feature 0, control along feature 1
    json.dumps(out)


def test_detector_scores_only_runs_it_was_not_fitted_on():
    flipped = drift_detector(four_runs(flip_test_seed=True), n_boot=200)
    assert flipped["value"] < 0.1  # scored on seed 1, where the signature is reversed
    swapped = drift_detector(four_runs(flip_test_seed=True), train_seeds=[1], test_seeds=[0], n_boot=200)
    assert set(swapped["train_runs"]).isdisjoint(swapped["test_runs"]) and swapped["test_seeds"] == [0]
    with pytest.raises(ValueError, match="overlap"):
        drift_detector(four_runs(), train_seeds=[0], test_seeds=[0, 1])
    renamed = four_runs()
    renamed[2].name = "em_s0"
    with pytest.raises(ValueError, match="unique"):
        drift_detector(renamed)


def test_detector_not_computable_with_one_seed():
    out = drift_detector(four_runs()[:2])
    assert out["value"] is None and "at least two of each" in out["reason"]
    lopsided = drift_detector(
        [r for r in four_runs() if r.name != "control_s1"] + [series("c_s2", 2, False, 1, 5)], test_seeds=[1]
    )
    assert lopsided["value"] is None and "test seeds [1]" in lopsided["reason"]
    pooled = drift_detector(  # the other seeds together hold both kinds: computable
        [r for r in four_runs() if r.name != "control_s1"] + [series("c_s2", 2, False, 1, 5)], n_boot=50
    )
    assert pooled["value"] is not None and pooled["test_seeds"] == [1, 2]


def test_checkpoint_features_measure_shift_in_step0_spreads():
    acts = constructed_run(WATCHED, onset=10)
    names, features = checkpoint_features(acts, {"persona": _unit(WATCHED), "other": _unit(2)})
    assert names == ["shift_persona", "shift_other", "shift_norm"]
    assert features[0].abs().max() == 0.0
    spread = acts[0, :, WATCHED].std()
    assert features[1, 0] == pytest.approx(1.0 / float(spread), rel=1e-4)
    assert features[-1, 2] > features[1, 2] > 0  # the shift grows with training


def test_a_zero_or_undefined_step0_spread_leaves_the_shift_norm_missing():
    directions = {"persona": _unit(WATCHED)}
    still = torch.ones(len(STEPS), M, D)  # every prompt the same at step 0: no spread
    still[1:] += 5.0  # a real change after step 0, which a clamped unit would make enormous
    _, features = checkpoint_features(still, directions)
    assert features[:, 1].isnan().all()  # shift_norm: missing, not huge
    assert features[:, 0].isnan().all()  # the standardised shift along the direction likewise
    _, one_prompt = checkpoint_features(constructed_run(WATCHED, onset=10)[:, :1], directions)
    assert one_prompt[:, 1].isnan().all()


def test_detector_leaves_out_and_counts_checkpoints_with_missing_features():
    runs = four_runs()
    runs[2].features[3:, 2] = float("nan")  # em_s1: checkpoints 3..5 lost a feature
    out = drift_detector(runs, n_boot=50)
    assert out["value"] is not None and out["n"] == 7  # 10 test checkpoints less the 3 missing
    assert out["missing"]["checkpoints"] == 3 and out["missing"]["runs"] == {"em_s1": 3}
    assert "left out" in out["note"] and "em_s1 (3)" in out["note"]
    gone = four_runs()
    gone[2].features[:, 2] = float("nan")  # the only EM test run: every checkpoint missing
    unmeasurable = drift_detector(gone)
    assert unmeasurable["value"] is None and unmeasurable["missing"]["checkpoints"] == 5
    assert "test seeds [1]" in unmeasurable["reason"] and "em_s1 (5)" in unmeasurable["reason"]
    clean = drift_detector(four_runs(), n_boot=50)
    assert clean["missing"]["checkpoints"] == 0 and "note" not in clean


def test_layer_series_reads_default_behaviour_at_one_layer(tmp_path):
    acts = constructed_run(WATCHED, onset=10)
    for step, x in zip(STEPS, acts):
        both = torch.stack([x, 2.0 * x], dim=1)  # two layers
        for probe, rows in (("em_questions", both[:25]), ("persona_questions", both[25:])):
            saved = Activations(rows, [0, 1], "last", [str(i) for i in range(len(rows))], probe)
            ActivationStore(tmp_path / "em" / "activations").save(f"em/step-{step:05d}/{probe}", saved)
    (tmp_path / "em").mkdir(exist_ok=True)
    (tmp_path / "em" / "done.json").write_text(json.dumps({"recorded": STEPS}))
    steps, loaded = layer_series(tmp_path, 1, rows=torch.arange(10))
    assert steps == STEPS and loaded.shape == (5, 10, D)
    assert torch.allclose(loaded, 2.0 * acts[:, :10])
