"""The drift metrics on constructed activation stores, where the truth is known: a drift that
exists is found beyond its null and one that does not is not; held-out and in-sample probe
accuracy differ when a probe overfits; stores read from other prompts are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from analysis.drift_report import compute_drift
from analysis.stats import across_seeds, null_percentile
from anchor.extract import Activations
from anchor.store import ActivationStore

D, STEPS = 24, [0, 5, 10, 15, 20]
TRAIT, CONFOUND, MISALIGN, OTHER = 0, 7, 3, 5  # the axes the constructed runs move along
QUESTIONS, PROMPTS = 12, 30


def _unit(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def _save(run: Path, step: int, probe: str, x: torch.Tensor, prompt_hash: str = "") -> None:
    tensor = torch.stack([x, 1.5 * x], dim=1)  # two layers carrying the same geometry
    acts = Activations(tensor, [0, 1], "response_mean", [str(i) for i in range(len(x))], prompt_hash or probe)
    ActivationStore(run / "em" / "activations").save(f"em/step-{step:05d}/{probe}", acts)


def build_run(
    run: Path,
    default: torch.Tensor,
    contrast_context: torch.Tensor,
    drift_axis: int | None,
    rotate: bool,
    seed: int,
    prompt_hash: str = "",
    amount: float = 3.0,
) -> None:
    """One EM run: default behaviour moves `amount` units along `drift_axis` by the end (none
    when None); the persona direction of the contrast reads rotates from TRAIT toward OTHER by 80
    degrees when `rotate`. The with-system read adds a label-dependent offset that never moves
    (the confound a system prompt adds)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([1, 0] * QUESTIONS)
    noise = 0.3 * torch.randn(2 * QUESTIONS, D, generator=g)
    neutral = torch.randn(10, D, generator=g)
    sign = (2 * labels - 1)[:, None].float()
    for k, step in enumerate(STEPS):
        progress = k / (len(STEPS) - 1)
        angle = math.radians(80) * progress if rotate else 0.0
        trait = math.cos(angle) * _unit(TRAIT) + math.sin(angle) * _unit(OTHER)
        bare = contrast_context + 2.0 * sign * trait + noise
        _save(run, step, "persona_contrast_bare", bare)
        _save(run, step, "persona_contrast", bare + 5.0 * sign * _unit(CONFOUND))
        moved = default + (amount * progress * _unit(drift_axis) if drift_axis is not None else 0.0)
        moved = moved + 0.05 * torch.randn(moved.shape, generator=g)
        _save(run, step, "em_questions", moved[:24], prompt_hash)
        _save(run, step, "persona_questions", moved[24:])
        _save(run, step, "neutral", neutral + 0.01 * step * torch.randn(neutral.shape, generator=g))
    (run / "em").mkdir(parents=True, exist_ok=True)
    (run / "em" / "done.json").write_text(json.dumps({"recorded": STEPS}))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """Persona run: drifts along the trait axis (toward the base model) and its direction rotates.
    Base run: drifts along the misalignment axis only. Control: moves along an unrelated axis."""
    root = tmp_path_factory.mktemp("drift")
    g = torch.Generator().manual_seed(0)
    default = torch.randn(PROMPTS, D, generator=g)
    context = torch.repeat_interleave(2.0 * torch.randn(QUESTIONS, D, generator=g), 2, dim=0)
    persona_default = default + 2.0 * _unit(TRAIT)  # character training moved behaviour along the trait
    runs = {"persona": root / "persona_drift", "base": root / "base", "control": root / "control"}
    # the persona run moves back toward the base model along the trait axis: a real anchor drift
    build_run(runs["persona"], persona_default, context, TRAIT, rotate=True, seed=1, amount=-3.0)
    build_run(runs["base"], default, context, MISALIGN, rotate=False, seed=2)
    build_run(runs["control"], persona_default, context, OTHER, rotate=False, seed=3)
    labels = torch.tensor([1, 0] * QUESTIONS)
    questions = [f"q{i // 2}" for i in range(2 * QUESTIONS)]
    misalignment = torch.stack([_unit(MISALIGN), _unit(MISALIGN)])
    result = compute_drift(
        runs, labels, [(q, 0) for q in questions], questions=questions, misalignment=misalignment, seed=0
    )
    return {"result": result, "runs": runs, "labels": labels, "questions": questions, "root": root}


def test_a_real_anchor_drift_exceeds_random_directions_and_no_drift_does_not(experiment):
    nulls = experiment["result"]["nulls"]
    assert nulls["persona"]["drift_auc_vs_matched_directions"]["percentile"] > 95
    assert nulls["persona"]["drift_auc_vs_matched_directions"]["exceeds_95"]
    # the control moved as much, but along an axis unrelated to the persona: not an anchor drift
    assert nulls["control"]["drift_auc_vs_matched_directions"]["percentile"] < 95
    assert not nulls["control"]["drift_auc_vs_matched_directions"]["exceeds_95"]
    assert nulls["persona"]["em_shift_cos_persona_vs_matched_directions"]["exceeds_95"]
    assert not nulls["control"]["em_shift_cos_persona_vs_matched_directions"]["exceeds_95"]


def test_movement_toward_misalignment_is_found_only_where_it_happened(experiment):
    nulls, runs = experiment["result"]["nulls"], experiment["result"]["runs"]
    assert nulls["base"]["misalignment_movement_vs_matched_directions"]["exceeds_95"]
    assert not nulls["persona"]["misalignment_movement_vs_matched_directions"]["exceeds_95"]
    base_end, persona_end = (
        runs["base"]["misalignment_movement"][-1][0],
        runs["persona"]["misalignment_movement"][-1][0],
    )
    assert base_end > 2.0 and abs(persona_end) < 0.5  # 3 units against a spread of about 1


def test_a_rotating_persona_direction_exceeds_the_shuffled_label_null_and_a_still_one_does_not(experiment):
    result = experiment["result"]
    nulls, layer = result["nulls"], result["best_layer"]
    assert nulls["persona"]["direction_rotation_vs_shuffled_labels"]["exceeds_95"]
    assert not nulls["control"]["direction_rotation_vs_shuffled_labels"]["exceeds_95"]
    # the probe fitted before EM still reads the unmoved runs, and fails on the rotated one
    assert nulls["control"]["probe_transfer_vs_shuffled_labels"]["exceeds_95"]
    assert result["runs"]["persona"]["probe_transfer"][-1][layer] < 0.8
    # read with the system prompt, the direction looks stable whatever the response does: the confound
    persona = result["runs"]["persona"]
    assert (
        persona["direction_stability"][-1][layer]
        < 0.3
        < persona["direction_stability_with_system"][-1][layer]
    )


def test_signed_and_absolute_drift_auc_and_a_simple_effect_as_a_difference(experiment):
    head = experiment["result"]["headline"]
    persona, control = head["drift_auc_signed"]["persona"], head["drift_auc_abs"]["control"]
    assert persona["value"] < 0 and persona["ci95"][1] < 0  # moved away from the persona
    assert head["drift_auc_abs"]["persona"]["value"] == pytest.approx(-persona["value"], rel=1e-6)
    assert abs(control["value"]) < 0.2  # moved, but not along the persona axis
    strength = head["simple_effects"]["persona_control_minus_persona_em"]
    assert strength["value"] < 0 and strength["ci95"][0] <= strength["value"] <= strength["ci95"][1]
    for number in head["anchor_after"].values():
        assert number["ci95"][0] <= number["value"] <= number["ci95"][1] and number["n"] == 1
    # the control's signed drift interval includes 0, so no ratio is formed against it
    assert experiment["result"]["simple_effect_ratios"]["persona_control_minus_persona_em"]["value"] is None
    assert "ratio" not in str(set(head))  # the headline holds numbers with intervals only


def test_held_out_probe_accuracy_differs_from_in_sample_when_the_probe_overfits(tmp_path):
    """Labels unrelated to the activations (wide, few items): in-sample accuracy is perfect,
    held-out accuracy is at chance; only the held-out one is reported as transfer."""
    g = torch.Generator().manual_seed(4)
    runs = {}
    for name in ("persona", "base"):
        run = tmp_path / name
        for step in STEPS[:2]:
            x = torch.randn(2 * QUESTIONS, D, generator=torch.Generator().manual_seed(7))
            _save(run, step, "persona_contrast_bare", x)
            _save(run, step, "persona_contrast", x)
            default = torch.randn(PROMPTS, D, generator=g)
            _save(run, step, "em_questions", default[:24])
            _save(run, step, "persona_questions", default[24:])
            _save(run, step, "neutral", torch.randn(10, D, generator=g))
        (run / "em").mkdir(parents=True, exist_ok=True)
        (run / "em" / "done.json").write_text(json.dumps({"recorded": STEPS[:2]}))
        runs[name] = run
    labels = torch.tensor([1, 0] * QUESTIONS)
    questions = [f"q{i // 2}" for i in range(2 * QUESTIONS)]
    result = compute_drift(
        runs, labels, [(q, 0) for q in questions], questions=questions, n_null=50, n_null_fits=20
    )
    probe = result["probe"]
    assert min(probe["in_sample_accuracy_at_r"]) > 0.95
    assert max(probe["held_out_accuracy_at_r"]) < 0.8
    assert probe["test_questions"] >= 3 and probe["train_questions"] + probe["test_questions"] == QUESTIONS


def test_stores_that_read_other_prompts_are_refused_naming_both(experiment, tmp_path):
    g = torch.Generator().manual_seed(0)
    other = tmp_path / "other_base"
    build_run(
        other,
        torch.randn(PROMPTS, D, generator=g),
        torch.zeros(2 * QUESTIONS, D),
        None,
        False,
        5,
        "resampled",
    )
    runs = {**experiment["runs"], "base": other}
    labels, questions = experiment["labels"], experiment["questions"]
    with pytest.raises(
        ValueError, match=r"'em_questions' read different prompts in .*persona_drift.* and .*other_base"
    ):
        compute_drift(runs, labels, [(q, 0) for q in questions], questions=questions)


def test_percentiles_and_seed_intervals():
    null = torch.arange(100, dtype=torch.double)
    assert null_percentile(99.5, null)["exceeds_95"] and not null_percentile(50.0, null)["exceeds_95"]
    assert null_percentile(2.0, null, "less")["exceeds_95"]  # the effect makes the figure smaller
    assert null_percentile(-99.5, null - 50, "two-sided")["percentile"] == 100.0
    pooled = across_seeds([0.2, 0.4])
    assert pooled["n"] == 2 and pooled["value"] == pytest.approx(0.3)
    # two seeds: t with one degree of freedom, far wider than the seeds' own range
    assert pooled["ci95"][0] < 0.2 - 0.5 and pooled["ci95"][1] > 0.4 + 0.5


def test_the_nulls_group_each_figure_beside_its_control_run_first(experiment):
    """One row per figure and start: the EM run's figure, its control run's, their difference, then
    the random-null percentiles; a start without a control run says so rather than borrowing one."""
    from analysis.headline import NULL_HEADER, null_rows

    nulls = experiment["result"]["nulls"]
    rows = {(r[0], r[1]): dict(zip(NULL_HEADER, r)) for r in null_rows(nulls)}
    auc = rows[("drift AUC along the persona direction (item spreads)", "persona")]
    em, control = (nulls[run]["drift_auc_vs_matched_directions"]["value"] for run in ("persona", "control"))
    assert float(auc["after EM"]) == pytest.approx(em, rel=1e-3)
    assert float(auc["after control data"]) == pytest.approx(control, rel=1e-3)
    assert float(auc["EM - control"]) == pytest.approx(em - control, rel=1e-3, abs=1e-3)
    assert auc["EM: percentile in random null"].endswith("(above its 95th)")
    assert auc["control: percentile in random null"].endswith("(below its 95th)")
    base = rows[("drift AUC along the persona direction (item spreads)", "base")]
    assert base["after control data"] == "no control run" and base["EM - control"] == "n/a"
    assert len(rows) == 2 * len(nulls["persona"])  # every figure, for both starts


def test_cka_is_reported_beside_its_shuffled_row_null(experiment):
    """Few rows in many dimensions make unrelated activations look similar: the null says how much."""
    run = experiment["result"]["runs"]["control"]
    assert all(abs(c - 1) < 1e-5 for c in run["cka_to_start"][0])  # step 0 against itself
    assert all(0 < n < 0.95 for n in run["cka_null_shuffled_rows"][0])
