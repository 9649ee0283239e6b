"""Drift metrics, per layer and checkpoint: small pure functions on tensors.

Shapes: activations `[n, L, d]` (items, layers, model width), directions `[L, d]`; results are per
layer `[L]` unless said otherwise. The reference checkpoint r is the persona model before EM.
Definitions follow the "Metrics" section of the design (ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import torch
import torch.nn.functional as F

from probes.directions import diff_in_means, fit_logistic


def persona_direction(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """v_t: mean activation under trait-eliciting minus trait-suppressing prompts, per layer."""
    return diff_in_means(acts, labels)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer cosine of two `[L, d]` direction stacks."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1).float()


def direction_stability(v_t: torch.Tensor, v_r: torch.Tensor) -> torch.Tensor:
    """cos(v_t, v_r): 1 while the persona direction keeps pointing where it did at the reference."""
    return cosine(v_t, v_r)


def projections(acts: torch.Tensor, v_r: torch.Tensor) -> torch.Tensor:
    """`[n, L]`: each item's activation on the unit reference direction."""
    return einops.einsum(acts.double(), F.normalize(v_r.double(), dim=-1), "n l d, l d -> n l").float()


def rescale(values: torch.Tensor, base: torch.Tensor, persona: torch.Tensor) -> torch.Tensor:
    """Map per-layer projections so that the base model's mean is 0 and the persona model's is 1."""
    return (values - base) / (persona - base)


def anchor_projection(
    acts: torch.Tensor, v_r: torch.Tensor, base_mean: torch.Tensor, persona_mean: torch.Tensor
) -> torch.Tensor:
    """Mean projection of default behaviour (no system prompt) on the unit v_r, rescaled so 0 = the
    base model and 1 = the persona model at r (`base_mean`, `persona_mean`: their mean
    projections, `[L]`). EM drift shows as its fall."""
    return rescale(projections(acts, v_r).mean(0), base_mean, persona_mean)


def fit_reference_probe(
    acts: torch.Tensor, labels: torch.Tensor, c: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer logistic probes fitted at the reference (on its train questions; they are scored
    on held-out questions there and at every checkpoint): weights `[L, d]`, bias `[L]`."""
    fits = [
        fit_logistic(acts[:, layer].double().numpy(), labels.numpy(), c) for layer in range(acts.shape[1])
    ]
    return torch.stack([w for _, w, _ in fits]), torch.tensor([b for _, _, b in fits], dtype=torch.float32)


def probe_transfer(
    weights: torch.Tensor, bias: torch.Tensor, acts: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Accuracy at checkpoint t of the probes fitted at r."""
    logits = einops.einsum(acts.double(), weights.double(), "n l d, l d -> n l") + bias.double()
    return ((logits > 0).long() == labels[:, None]).float().mean(0)


def contrast_subspace(
    acts: torch.Tensor, labels: torch.Tensor, pairs: Sequence[object], k: int
) -> torch.Tensor:
    """`[L, d, k]` orthonormal basis of the top-k directions of the paired contrast differences
    (elicited minus suppressed, one difference per pair key, e.g. (question, contrast pair))."""
    keys = list(dict.fromkeys(pairs))
    rows = []
    for key in keys:
        mask = torch.tensor([p == key for p in pairs])
        pos, neg = mask & (labels == 1), mask & (labels == 0)
        if pos.any() and neg.any():
            rows.append(acts[pos].double().mean(0) - acts[neg].double().mean(0))
    if len(rows) < k:
        raise ValueError(f"a {k}-dimensional subspace needs at least {k} complete pairs, got {len(rows)}")
    diffs = einops.rearrange(torch.stack(rows), "p l d -> l p d")
    vh = torch.linalg.svd(diffs, full_matrices=False).Vh  # [L, p, d]
    return einops.rearrange(vh[:, :k], "l k d -> l d k").float()


def principal_angles(q_t: torch.Tensor, q_r: torch.Tensor) -> torch.Tensor:
    """`[L, k]` principal angles (radians, ascending) between two orthonormal `[L, d, k]` bases."""
    cosines = torch.linalg.svdvals(q_t.double().transpose(1, 2) @ q_r.double()).clamp(-1, 1)
    return torch.arccos(cosines).float()


def subspace_overlap(q_t: torch.Tensor, q_r: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine of the principal angles: 1 = same subspace, 0 = orthogonal."""
    return torch.cos(principal_angles(q_t, q_r)).pow(2).mean(-1)


def em_shift(acts_t: torch.Tensor, acts_0: torch.Tensor) -> torch.Tensor:
    """`[L, d]`: the mean activation change EM caused on the same prompts."""
    return acts_t.double().mean(0).float() - acts_0.double().mean(0).float()


def misalignment_direction(
    acts: torch.Tensor, alignment: Sequence[float | None], below: float = 30.0, above: float = 70.0
) -> torch.Tensor | None:
    """Mean activation of misaligned answers (alignment < `below`) minus aligned ones (> `above`);
    None when either side has fewer than two answers."""
    scores = torch.tensor([float("nan") if a is None else a for a in alignment])
    bad, good = scores < below, scores > above
    if bad.sum() < 2 or good.sum() < 2:
        return None
    return acts[bad].double().mean(0).float() - acts[good].double().mean(0).float()


def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """`[n, L, d]` -> `[L, n, n]` (float64): the items' inner products per layer after centring
    over items; linear CKA needs only these, and with n items << d they are far smaller than the
    `[d, d]` cross-covariances."""
    x = einops.rearrange(x.double(), "n l d -> l n d")
    x = x - x.mean(1, keepdim=True)
    return x @ x.transpose(1, 2)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two checkpoints' activations on the same items, per layer: `[n, L, d]`
    twice -> `[L]`. Invariant to rotations and isotropic scaling of either. Computed from the
    Gram matrices: ||X'Y||^2 = <XX', YY'> and ||X'X|| = ||XX'|| (Frobenius)."""
    return cka_of_grams(centred_gram(x), centred_gram(y))


def cka_of_grams(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Linear CKA `[L]` from `centred_gram`s of the same items."""
    cross = (gram_x * gram_y).sum((1, 2))
    return (cross / (torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y))).float()


def drift_auc(values: Sequence[float], steps: Sequence[int], signed: bool = False) -> float:
    """Area under value(t) - value(0) over training progress scaled to [0, 1] (trapezoid rule),
    of its magnitude by default: 0 = never moved; 1 = moved by one unit (e.g. the base-to-persona
    gap) from the first step on. `signed`: positive = moved up (toward the persona on the anchor
    scale), negative = down, so a run that moves toward the persona is not counted as drift away.
    NaN (undefined, not 0) with fewer than two checkpoints."""
    v = torch.tensor(values, dtype=torch.double)
    s = torch.tensor(steps, dtype=torch.double)
    if len(v) < 2 or s[-1] == s[0]:
        return float("nan")
    change = v - v[0]
    return float(torch.trapezoid(change if signed else change.abs(), (s - s[0]) / (s[-1] - s[0])))


def drift_auc_batch(values: torch.Tensor, steps: Sequence[int], signed: bool = False) -> torch.Tensor:
    """`drift_auc` of many curves at once: `values` `[..., T]` -> `[...]` (NaN below two checkpoints)."""
    s = torch.tensor(steps, dtype=torch.double)
    if values.shape[-1] < 2 or s[-1] == s[0]:
        return torch.full(values.shape[:-1], float("nan"), dtype=torch.double)
    change = values.double() - values[..., :1].double()
    return torch.trapezoid(change if signed else change.abs(), (s - s[0]) / (s[-1] - s[0]), dim=-1)


def drift_reduction(auc_persona: float, auc_reference: float) -> float:
    """A simple effect's ratio form, 1 - drift(persona run) / drift(reference run): 1 = the persona
    run did not move at all, 0 = it moved as much as the reference, negative = more. Only meaningful
    when the reference's drift is clearly not 0 (the caller checks its interval); never the
    experiment's answer, which is the 2x2 interaction (`analysis.interaction`)."""
    if auc_reference == 0:
        return float("nan")
    return 1.0 - auc_persona / auc_reference


def gaussian_directions(acts: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`[n, d]` unit directions u ~ N(0, Sigma), Sigma the sample covariance of `acts` `[m, d]`:
    the null for "does this direction move more than directions the activations actually vary
    along?" (isotropic directions in d dimensions are nearly orthogonal to everything, so against
    them almost any drift looks significant)."""
    centred = acts.double() - acts.double().mean(0)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, centred.shape[0], generator=g, dtype=torch.double)
    return F.normalize(z @ centred, dim=-1).float()  # z @ X_c ~ N(0, (m - 1) Sigma)


def variance_matched_directions(
    acts: torch.Tensor, direction: torch.Tensor, n: int, seed: int, candidates: int = 20
) -> torch.Tensor:
    """`[n, d]` random unit directions whose spread in `acts` `[m, d]` matches `direction`'s: the
    null for a standardised figure (a change in units of the spread along the direction). Drawn
    from N(0, Sigma^a) for powers a from -1 to 1 (Sigma regularised to full rank), `candidates` x n
    of them, the n nearest to the direction's log-variance kept. N(0, Sigma) alone concentrates on
    high-variance directions, where a standardised change is small, so any direction of ordinary
    spread would beat it."""
    x = acts.double() - acts.double().mean(0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(1e-6 * float(evals.clamp_min(0).mean()) + 1e-12)
    g = torch.Generator().manual_seed(seed)
    powers = torch.linspace(-1, 1, 9, dtype=torch.double)
    per = max(1, (candidates * n) // len(powers))
    draws = []
    for a in powers:
        z = torch.randn(per, x.shape[1], generator=g, dtype=torch.double)
        draws.append((z * evals.pow(a / 2)) @ evecs.T)
    pool = F.normalize(torch.cat(draws), dim=-1)
    variance = lambda u: torch.einsum("nd,de,ne->n", u, cov, u)  # noqa: E731
    target = variance(F.normalize(direction.double(), dim=0)[None]).log()
    nearest = (variance(pool).log() - target).abs().argsort()[:n]
    return pool[nearest].float()


def spread_unit(spread: torch.Tensor) -> torch.Tensor:
    """A spread used as a unit of change: NaN where it is 0, where the unit is undefined (a clamp
    would turn any change there into a huge finite number)."""
    return torch.where(spread > 0, spread, torch.nan)


def standardised_change(projections: torch.Tensor) -> torch.Tensor:
    """`[T, m, k]` projections of m items on k directions at T checkpoints -> `[k, T]`: the change
    of the item mean since the first checkpoint, in units of the items' spread there, so
    directions of any scale compare. NaN along a direction the items do not spread on, and
    everywhere with fewer than two items (the unit is undefined there)."""
    mean = projections.double().mean(1)  # [T, k]
    if projections.shape[1] < 2:
        return torch.full_like(mean, torch.nan).T
    return ((mean - mean[:1]) / spread_unit(projections[0].double().std(0))).T


def shuffle_within(
    labels: torch.Tensor, groups: Sequence[object], generator: torch.Generator
) -> torch.Tensor:
    """The labels permuted within each group (question): the null refit keeps each question's
    balance of labels and its shared context, and breaks only which answer is which."""
    out = labels.clone()
    index: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    for rows in index.values():
        rows_t = torch.tensor(rows)
        out[rows_t] = labels[rows_t[torch.randperm(len(rows), generator=generator)]]
    return out
