import math

import pytest
import torch

from analysis import drift


def test_direction_stability_is_the_cosine_to_the_reference():
    v = torch.randn(3, 16)
    other = torch.randn(3, 16)
    orth = other - (other * v).sum(-1, keepdim=True) / v.pow(2).sum(-1, keepdim=True) * v
    assert torch.allclose(drift.direction_stability(2 * v, v), torch.ones(3), atol=1e-6)
    assert torch.allclose(drift.direction_stability(-v, v), -torch.ones(3), atol=1e-6)
    assert torch.allclose(drift.direction_stability(orth, v), torch.zeros(3), atol=1e-5)


def test_persona_direction_is_the_label_mean_difference():
    acts = torch.zeros(4, 1, 2)
    acts[:2, 0] = torch.tensor([3.0, 1.0])
    labels = torch.tensor([1, 1, 0, 0])
    assert torch.allclose(drift.persona_direction(acts, labels), torch.tensor([[3.0, 1.0]]))


def test_anchor_projection_is_zero_at_base_and_one_at_the_persona():
    torch.manual_seed(0)
    v = torch.randn(2, 8)
    unit = v / v.norm(dim=-1, keepdim=True)
    base = torch.randn(10, 2, 8)
    persona = base + 2.0 * unit  # moved two units along v at every layer
    b, p = drift.projections(base, v).mean(0), drift.projections(persona, v).mean(0)
    assert torch.allclose(drift.anchor_projection(base, v, b, p), torch.zeros(2), atol=1e-5)
    assert torch.allclose(drift.anchor_projection(persona, v, b, p), torch.ones(2), atol=1e-5)
    halfway = base + unit + torch.randn(2, 8) * 0  # an off-axis change would not count either
    assert torch.allclose(drift.anchor_projection(halfway, v, b, p), torch.full((2,), 0.5), atol=1e-5)


def test_probe_transfer_holds_on_the_same_geometry_and_breaks_when_it_flips():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1] * 20)
    acts = torch.randn(40, 2, 6)
    acts[:, :, 0] += 4 * (labels[:, None] * 2 - 1)
    w, b = drift.fit_reference_probe(acts, labels)
    assert torch.allclose(drift.probe_transfer(w, b, acts, labels), torch.ones(2))
    flipped = acts.clone()
    flipped[:, :, 0] *= -1
    assert drift.probe_transfer(w, b, flipped, labels).max() < 0.1


def test_principal_angles_and_overlap_of_known_subspaces():
    eye = torch.eye(6)
    q = eye[:, :2][None]  # span(e0, e1)
    rotated = (eye[:, :2] @ torch.tensor([[0.6, -0.8], [0.8, 0.6]]))[None]  # same span, other basis
    other = eye[:, 2:4][None]
    assert torch.allclose(drift.principal_angles(q, rotated), torch.zeros(1, 2), atol=1e-3)
    assert torch.allclose(drift.principal_angles(q, other), torch.full((1, 2), math.pi / 2), atol=1e-5)
    assert drift.subspace_overlap(q, rotated).item() == pytest.approx(1.0, abs=1e-5)
    tilted = torch.stack([eye[:, 0], (eye[:, 1] + eye[:, 2]) / math.sqrt(2)], dim=1)[None]
    assert drift.subspace_overlap(q, tilted).item() == pytest.approx((1 + 0.5) / 2, abs=1e-5)


def test_contrast_subspace_recovers_the_difference_directions():
    torch.manual_seed(0)
    acts, labels, pairs = [], [], []
    for p in range(8):
        base = torch.randn(1, 5)
        shift = torch.zeros(1, 5)
        shift[0, p % 2] = 3.0 + p  # differences live in span(e0, e1)
        acts += [base + shift, base]
        labels += [1, 0]
        pairs += [p, p]
    q = drift.contrast_subspace(torch.stack(acts), torch.tensor(labels), pairs, k=2)
    assert q.shape == (1, 5, 2)
    assert drift.subspace_overlap(q, torch.eye(5)[:, :2][None]).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 3 complete pairs"):
        drift.contrast_subspace(torch.stack(acts[:4]), torch.tensor(labels[:4]), pairs[:4], k=3)


def test_em_shift_and_its_cosine_with_the_persona_direction():
    torch.manual_seed(0)
    v = torch.randn(2, 8)
    before = torch.randn(12, 2, 8)
    after = before - 0.7 * v  # EM pushes against the persona direction
    shift = drift.em_shift(after, before)
    assert torch.allclose(drift.cosine(shift, v), -torch.ones(2), atol=1e-5)


def test_misalignment_direction_needs_both_sides():
    acts = torch.zeros(5, 1, 2)
    acts[:2, 0, 0] = 1.0
    direction = drift.misalignment_direction(acts, [10, 20, 90, 95, None])
    assert torch.allclose(direction, torch.tensor([[1.0, 0.0]]))
    assert drift.misalignment_direction(acts, [10, 90, 95, 99, None]) is None


def test_linear_cka_is_invariant_to_rotation_and_scale_and_low_for_unrelated():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert drift.linear_cka(x, 3 * x @ q).item() == pytest.approx(1.0, abs=1e-5)
    assert drift.linear_cka(x, torch.randn(200, 1, 16)).item() < 0.15


def test_linear_cka_from_grams_equals_the_cross_covariance_form_and_its_shuffled_null():
    """The Gram form (n x n) is the definition's (d x d) form rewritten, not an approximation."""
    from analysis.drift_report import _cka_null

    torch.manual_seed(1)
    x, y = torch.randn(12, 3, 40), torch.randn(12, 3, 40)
    y[:, 1] += 2 * x[:, 1]  # one layer related, two not

    def by_definition(a, b):
        a = a.double().transpose(0, 1) - a.double().transpose(0, 1).mean(1, keepdim=True)
        b = b.double().transpose(0, 1) - b.double().transpose(0, 1).mean(1, keepdim=True)
        cross = torch.linalg.matrix_norm(a.transpose(1, 2) @ b).pow(2)
        return cross / (
            torch.linalg.matrix_norm(a.transpose(1, 2) @ a) * torch.linalg.matrix_norm(b.transpose(1, 2) @ b)
        )

    torch.testing.assert_close(drift.linear_cka(x, y).double(), by_definition(x, y), rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(7)
    shuffled = torch.stack([by_definition(x[torch.randperm(12, generator=g)], y) for _ in range(20)]).mean(0)
    torch.testing.assert_close(_cka_null(x, y, seed=7).double(), shuffled, rtol=1e-6, atol=0)
    assert drift.linear_cka(x, y)[1] > _cka_null(x, y, seed=7)[1]  # the related layer beats its null


def test_drift_auc_and_drift_reduction():
    assert drift.drift_auc([1.0, 1.0, 1.0], [0, 5, 10]) == 0.0
    assert drift.drift_auc([1.0, 0.5, 0.0], [0, 5, 10]) == pytest.approx(0.5)
    assert drift.drift_auc([0.0, 1.0, 1.0], [0, 1, 10]) == pytest.approx(0.95)
    assert drift.drift_reduction(0.25, 0.5) == pytest.approx(0.5)
    assert drift.drift_reduction(0.5, 0.5) == 0.0
    assert math.isnan(drift.drift_reduction(0.1, 0.0))


def test_undefined_figures_stay_missing_never_zero():
    """One checkpoint has no drift AUC; a direction the items do not spread on has no standardised
    change; a seed without a value is counted, not dropped silently."""
    import math

    from analysis.stats import across_seeds

    assert math.isnan(drift.drift_auc([0.3], [0]))
    assert drift.drift_auc_batch(torch.ones(4, 1), [0]).isnan().all()
    flat = torch.zeros(3, 5, 2)  # [T, m, k]: every item at 0 along the first direction
    flat[..., 1] = torch.randn(3, 5)
    change = drift.standardised_change(flat)
    assert change[0].isnan().all() and not change[1].isnan().any()
    pooled = across_seeds([0.2, float("nan"), 0.4, None])
    assert pooled["n"] == 2 and pooled["missing_seeds"] == 2 and pooled["value"] == pytest.approx(0.3)
    assert "missing_seeds" not in across_seeds([0.2, 0.4])
