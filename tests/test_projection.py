import pytest
import torch

from analysis.projection import bootstrap_mean_difference, project


def test_project_normalises_the_direction():
    acts = torch.zeros(2, 1, 3)
    acts[0, 0] = torch.tensor([2.0, 5.0, 0.0])
    acts[1, 0] = torch.tensor([-1.0, 0.0, 7.0])
    assert project(acts, torch.tensor([[10.0, 0.0, 0.0]])).tolist() == [[2.0], [-1.0]]


def test_bootstrap_interval_covers_a_known_shift_and_excludes_zero():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, generator=g) + 1.0, torch.randn(400, generator=g)
    diff, lo, hi = bootstrap_mean_difference(a, b)
    assert lo < 1.0 < hi and lo > 0.5 and diff == pytest.approx(float(a.mean() - b.mean()))
    same_diff, same_lo, same_hi = bootstrap_mean_difference(b, b.flip(0))
    assert same_lo < 0 < same_hi and same_diff == pytest.approx(0.0, abs=1e-9)
