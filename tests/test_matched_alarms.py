"""Matched alarms on constructed signals: both alarms share their checkpoints and their false-alarm
rate, so neither leads when neither signal changes, and a lead time needs both to fire."""

from __future__ import annotations

import json

import torch

from analysis.matched_alarms import (
    PairedSignal,
    behaviour_signal,
    matched_alarms,
    pool_matched,
    question_rates,
    sign_flip_p,
)

STEPS = (0, 5, 10, 15, 20)


def _signal(
    name: str, unit: str, m: int, em_shift: dict[int, float], seed: int, control_shift=None
) -> PairedSignal:
    """Per-unit changes since step 0: noise for both runs, plus `em_shift[step]` on the EM run."""
    g = torch.Generator().manual_seed(seed)
    em, control = {}, {}
    for step in STEPS:
        em[step] = torch.randn(m, generator=g) + em_shift.get(step, 0.0)
        control[step] = torch.randn(m, generator=g) + (control_shift or {}).get(step, 0.0)
    return PairedSignal(name, unit, em, control)


def test_sign_flip_p_is_exact_for_few_units():
    assert sign_flip_p(torch.ones(6)) == 1 / 64  # only the observed pattern reaches the observed mean
    assert sign_flip_p(-torch.ones(6)) == 1.0
    assert 0.3 < sign_flip_p(torch.tensor([1.0, -1.0, 0.5, -0.5])) <= 1.0


def test_with_no_change_in_either_signal_neither_alarm_fires_and_neither_leads():
    rep = _signal("misalignment direction", "report prompt", 24, {}, seed=1)
    beh = _signal("misaligned rate", "evaluation question", 8, {}, seed=2)
    for signal in (rep, beh):  # the EM run moves exactly as its control does, unit by unit
        signal.control = dict(signal.em)
    out = matched_alarms(rep, beh)
    assert out["looks"] == [5, 10, 15, 20]
    assert out["representation"]["looks"] == out["behaviour"]["looks"]  # the same checkpoints
    assert out["representation"]["level_per_look"] == out["behaviour"]["level_per_look"] == 0.05 / 4
    assert all(
        look["p"] == 1.0 for a in ("representation", "behaviour") for look in out[a]["per_look"].values()
    )
    assert out["representation"]["alarm_step"] is None and out["behaviour"]["alarm_step"] is None
    assert out["lead_time"]["lead_steps"] is None
    assert "not measured: neither alarm fired" in out["lead_time"]["words"]


def test_a_lead_is_measured_only_when_both_fire_and_has_the_right_sign():
    rep = _signal("misalignment direction", "report prompt", 24, {10: 3.0, 15: 3.0, 20: 3.0}, seed=3)
    beh = _signal("misaligned rate", "evaluation question", 8, {20: 4.0}, seed=4)
    out = matched_alarms(rep, beh)
    assert out["representation"]["alarm_step"] == 10
    assert out["behaviour"]["alarm_step"] == 20
    assert out["lead_time"]["lead_steps"] == 10
    assert out["lead_time"]["bounds"] == [15 - 10, 20 - 5]  # each crossing lies after the previous look
    assert "representation alarm fired 10 steps before" in out["lead_time"]["words"]
    # the behavioural signal alone moving: only one alarm, so no lead time
    out = matched_alarms(_signal("m", "report prompt", 24, {}, seed=5), beh)
    assert out["behaviour"]["alarm_step"] == 20 and out["representation"]["alarm_step"] is None
    assert out["lead_time"]["lead_steps"] is None
    assert "not measured: only the behavioural alarm fired (step 20)" in out["lead_time"]["words"]


def test_a_control_run_that_moves_as_far_raises_no_alarm():
    """Any fine-tuning moves a model: the control run is the null, not step 0. Here the control's
    units move by the EM run's own changes, in another order: as far on average, at every step."""
    moved = {10: 3.0, 15: 3.0, 20: 3.0}
    rep = _signal("r", "report prompt", 24, moved, seed=6)
    beh = _signal("b", "evaluation question", 8, moved, seed=7)
    for signal in (rep, beh):
        signal.control = {step: change.roll(1) for step, change in signal.em.items()}
    out = matched_alarms(rep, beh)
    assert out["representation"]["alarm_step"] is None and out["behaviour"]["alarm_step"] is None
    # against step 0 instead, both would have fired: the shift is three noise sds
    assert (
        matched_alarms(_signal("r", "report prompt", 24, moved, seed=6), None, "x")["representation"][
            "alarm_step"
        ]
        == 10
    )


def test_the_false_alarm_rate_under_the_control_null_stays_at_alpha():
    fired = 0
    for seed in range(200):
        out = matched_alarms(
            _signal("r", "report prompt", 12, {}, seed=100 + seed), None, behaviour_missing="not measured"
        )
        fired += out["representation"]["alarm_step"] is not None
    assert fired / 200 <= 0.05 + 0.035  # alpha plus about 2.3 binomial standard errors


def test_looks_are_the_checkpoints_both_signals_share_and_missing_behaviour_is_said():
    rep = _signal("r", "report prompt", 24, {}, seed=8)
    beh = _signal("b", "evaluation question", 8, {}, seed=9)
    for step in (5, 15):  # behaviour evaluated every second checkpoint
        del beh.em[step], beh.control[step]
    assert matched_alarms(rep, beh)["looks"] == [10, 20]
    del beh.control[10], beh.control[20]
    out = matched_alarms(rep, beh)
    assert out["representation"] is None and "not computable" in out["lead_time"]["words"]
    out = matched_alarms(rep, None, behaviour_missing="the judge cannot flag")
    assert out["behaviour"] is None and "the judge cannot flag" in out["lead_time"]["words"]
    assert out["representation"]["looks"] == [5, 10, 15, 20]


def test_missing_units_are_left_out_and_counted():
    rep = _signal("r", "report prompt", 24, {}, seed=10)
    beh = _signal("b", "evaluation question", 8, {}, seed=11)
    beh.em[20][:3] = float("nan")
    out = matched_alarms(rep, beh)
    assert out["behaviour"]["per_look"][20]["missing_units"] == 3
    assert out["behaviour"]["per_look"][20]["em_minus_control"]["n"] == 5


def test_one_shared_checkpoint_cannot_order_two_alarms():
    rep = _signal("r", "report prompt", 24, {20: 3.0}, seed=12)
    beh = _signal("b", "evaluation question", 8, {20: 4.0}, seed=13)
    for step in (5, 10, 15):  # behaviour read at step 0 and the end only
        del beh.em[step], beh.control[step]
    out = matched_alarms(rep, beh)
    assert out["representation"]["alarm_step"] == out["behaviour"]["alarm_step"] == 20
    assert out["lead_time"]["lead_steps"] is None and "one shared checkpoint" in out["lead_time"]["words"]


def test_an_alarm_whose_units_barely_differ_says_it_cannot_fire():
    beh = _signal("b", "evaluation question", 8, {}, seed=14)
    beh.control = {step: change.clone() for step, change in beh.em.items()}
    beh.em[20][:2] += 5.0  # two questions differ: the smallest p is 1/4, above 0.05 / 4
    out = matched_alarms(_signal("r", "report prompt", 24, {}, seed=15), beh)
    assert out["behaviour"]["per_look"][20]["can_reach_level"] is False  # present: 8; differing: 2
    assert out["behaviour"]["alarm_step"] is None
    assert "too few evaluation questions differ" in out["behaviour"]["underpowered"]
    assert out["representation"]["per_look"][20]["can_reach_level"] is True


def test_the_behavioural_signal_is_per_plain_question_and_keeps_unscored_questions_missing():
    thresholds = {"misaligned_below": 30, "coherent_above": 50}

    def row(q: str, aligned, coherent=90.0) -> dict:
        return {"question_id": q, "question": q, "aligned": aligned, "coherent": coherent}

    start = [row("a", 90), row("a", 90), row("b", 90), row("b", None)]
    em = {0: start, 20: [row("a", 10), row("a", 90), row("b", None), row("a__json", 5)]}
    control = {0: start, 20: [row("a", 90), row("a", 90), row("b", 90)]}
    signal = behaviour_signal(em, control, thresholds)
    assert question_rates(start, ["a", "b"], thresholds).tolist() == [0.0, 0.0]
    assert signal.em[20][0].item() == 0.5 and signal.em[20][1].isnan()  # b: no scored answer at the end
    assert signal.control[20].tolist() == [0.0, 0.0]
    assert len(signal.em[20]) == 2  # the triggered variant a__json is not a unit


def _seeds(n: int, rep_shift: dict, beh_shift: dict, flip: bool = False) -> list[dict]:
    """Per-seed matched alarms as a seed's metrics.json holds them (JSON: string step keys)."""
    out = []
    for seed in range(n):
        sign = -1.0 if flip and seed % 2 else 1.0
        rep = _signal("r", "report prompt", 24, {k: sign * v for k, v in rep_shift.items()}, seed=50 + seed)
        beh = _signal(
            "b", "evaluation question", 8, {k: sign * v for k, v in beh_shift.items()}, seed=80 + seed
        )
        out.append(json.loads(json.dumps(matched_alarms(rep, beh))))
    return out


def test_across_seeds_the_alarms_fire_only_with_three_seeds_that_agree():
    rep_shift, beh_shift = {10: 3.0, 15: 3.0, 20: 3.0}, {20: 4.0}
    pooled = pool_matched(_seeds(3, rep_shift, beh_shift))
    assert pooled["looks"] == [5, 10, 15, 20]
    assert pooled["representation"]["alarm_step"] == 10 and pooled["behaviour"]["alarm_step"] == 20
    assert pooled["lead_time"]["lead_steps"] == 10
    assert pooled["representation"]["per_look"][10]["signs"] == ["+", "+", "+"]
    # one seed: the same changes, no alarm, said to be descriptive
    one = pool_matched(_seeds(1, rep_shift, beh_shift))
    assert one["representation"]["alarm_step"] is None and one["representation"]["per_look"][10]["p"] is None
    assert one["lead_time"]["lead_steps"] is None and "descriptive" in one["lead_time"]["words"]
    # seeds that disagree in sign: no run-level alarm, although every seed alone would fire
    mixed = _seeds(4, rep_shift, beh_shift, flip=True)
    assert all(m["representation"]["alarm_step"] is not None for m in mixed[::2])
    pooled = pool_matched(mixed)
    assert pooled["representation"]["alarm_step"] is None and pooled["lead_time"]["lead_steps"] is None
