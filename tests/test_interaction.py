"""The 2x2 interaction, seeds as the unit of inference, and the variance-matched null, on constructed
activations where the truth is known."""

import torch

from analysis import drift
from analysis.interaction import (
    VERDICT_WORDS,
    interaction,
    interaction_rows,
    pool_interaction,
    pooled_layer,
    verdict,
)
from analysis.stats import null_percentile

M, L, D = 60, 3, 8


def two_by_two(shifts: dict[str, float], seed: int = 0, noise: float = 1.0) -> dict:
    """Start and end reads `[M, L, D]` of the four runs; each run's default behaviour moves by
    `shifts[run]` along the first axis (at every layer), plus per-prompt noise."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.zeros(L, D)
    axis[:, 0] = 1
    starts = {
        "persona": torch.randn(M, L, D, generator=g) + 3 * axis,
        "base": torch.randn(M, L, D, generator=g),
    }
    start_of = {"persona": "persona", "control": "persona", "base": "base", "base_control": "base"}
    reads = {}
    for run, shift in shifts.items():
        start = starts[start_of[run]]
        reads[run] = (start, start + shift * axis + noise * 0.3 * torch.randn(M, L, D, generator=g))
    return reads


def direction() -> torch.Tensor:
    v = torch.zeros(L, D)
    v[:, 0] = 1
    return v


def test_an_interaction_that_exists_is_found_and_one_that_does_not_is_not():
    # EM moves the base model 2 spreads toward misalignment beyond control, the persona model 0.5
    real = interaction(
        two_by_two({"persona": 0.5, "control": 0.0, "base": 2.0, "base_control": 0.0}), direction(), 1
    )
    low, high = real["interaction"]["ci95"]
    assert abs(real["interaction"]["value"] + 1.5) < 0.2 and high < 0
    # any fine-tuning moves both models alike: big simple effects, no interaction
    none = interaction(
        two_by_two({"persona": 2.0, "control": 1.5, "base": 2.0, "base_control": 1.5}), direction(), 1
    )
    low, high = none["interaction"]["ci95"]
    assert low < 0 < high and abs(none["interaction"]["value"]) < 0.2
    assert none["corrupted_vs_control_in_persona"]["value"] > 0.3  # a simple effect is not the interaction
    assert len(none["by_layer"]["interaction"]) == L and none["interaction"]["n"] == 1


def test_three_seeds_with_a_real_interaction_give_a_verdict_and_one_seed_gives_none():
    cells = {"persona": 0.5, "control": 0.0, "base": 2.0, "base_control": 0.0}
    seeds = [interaction(two_by_two(cells, seed=s), direction(), 1) for s in range(3)]
    pooled = pool_interaction(seeds, 1, "misalignment")["interaction"]
    assert pooled["n"] == 3 and pooled["signs"] == ["-", "-", "-"] and len(pooled["per_seed"]) == 3
    assert "resists" in pooled["verdict"]["words"] and pooled["verdict"]["p"] < 0.05
    assert pooled["minimum_detectable"] is not None and pooled["minimum_detectable"] > 0
    one = pool_interaction(seeds[:1], 1, "misalignment")
    assert (
        one["interaction"]["verdict"]["words"] is None
        and "descriptive" in one["interaction"]["verdict"]["descriptive"]
    )
    text = " ".join(str(cell) for row in interaction_rows({"misalignment": one}) for cell in row).lower()
    assert "descriptive" in text and not any(word in text for word in VERDICT_WORDS)
    assert verdict([0.1, -0.1, 0.05], "persona")["words"].startswith("no interaction")


def test_pooled_seeds_use_one_layer_chosen_on_the_pooled_selection_halves():
    # each seed alone would pick another layer (1 and 2); pooled, layer 2 wins for both
    selection = [[0.0, 1.0, 0.9], [0.0, 0.2, 1.0]]
    layer = pooled_layer(selection)
    assert layer == 2
    seeds = [{"by_layer": {"interaction": [0.0, 5.0, -1.0 - s]}} for s in range(2)]
    pooled = pool_interaction(seeds, layer, "misalignment")
    assert pooled["layer"] == 2 and pooled["interaction"]["per_seed"] == [-1.0, -2.0]


def test_the_variance_matched_null_rejects_what_the_old_null_passed():
    """Activations with a steep spectrum and an EM shift along nothing in particular: ordinary random
    directions' standardised shifts beat most N(0, Sigma) directions (those sit on the high-variance
    axes, where a standardised shift is small), so the old null "passes" directions that are not
    special; against directions of their own spread they pass at about the nominal 5%."""
    g = torch.Generator().manual_seed(0)
    d = 64
    acts = torch.randn(400, d, generator=g) * torch.logspace(2, -2, d)
    shift = torch.randn(d, generator=g)

    def z(u: torch.Tensor) -> torch.Tensor:  # the standardised shift along each unit direction
        return (shift @ u.T) / (acts @ u.T).std(0)

    old_passes = new_passes = 0
    for k in range(20):
        v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        real = float(z(v[None])[0])
        old_passes += null_percentile(real, z(drift.gaussian_directions(acts, 300, seed=k)), "two-sided")[
            "exceeds_95"
        ]
        matched = drift.variance_matched_directions(acts, v, 300, seed=k)
        new_passes += null_percentile(real, z(matched), "two-sided")["exceeds_95"]
    assert old_passes >= 8 and new_passes <= 3, (old_passes, new_passes)  # nominal: 1 of 20


def test_only_the_persona_directions_interaction_is_marked_not_interpretable():
    from analysis.interaction import not_interpretable

    seeds = [{"by_layer": {"interaction": [0.0, -1.0 - s]}} for s in range(3)]
    pooled = {d: pool_interaction(seeds, 1, d) for d in ("persona", "misalignment")}
    assert not_interpretable(pooled, None) is pooled
    marked = not_interpretable(pooled, "the contrast probe is at chance")
    assert marked["persona"]["interaction"]["value"] is None and marked["persona"]["interaction"]["n"] == 3
    assert marked["persona"]["interaction"]["reason"] == "not interpretable: the contrast probe is at chance"
    assert (
        marked["misalignment"] == pooled["misalignment"] and pooled["persona"]["interaction"]["value"] == -2.0
    )
