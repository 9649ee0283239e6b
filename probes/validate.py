"""Causal validation of a direction: steer along it and ablate it while the model answers, then
read the answers with a read-out that was fitted on other data.

A direction that was fitted to separate two sets of activations may separate them for reasons the
model does not use. If it is causal, adding it while generating should make the answers themselves
more like its positive end, and projecting it out should make them less so. The answers are read
in a clean pass (no hooks: see probes.steering), by a probe fitted on independent labelled text, so
neither the injected vector nor the direction's own training data can produce the effect.

Coefficient units: "direction" adds `c x v` with `v` as stored (for a diff-in-means direction, c
persona/contrast gaps); "residual" adds `c x mean residual norm at the layer x unit(v)`, so c = 0.1
moves the residual stream by a tenth of its typical length whatever the direction's norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import GroupKFold

from anchor.chat import Conversation
from anchor.extract import extract
from probes.contrast import ContrastItem
from probes.directions import DirectionStack, diff_in_means, fit_logistic
from probes.steering import LinearReadout

Units = Literal["direction", "residual"]
UNITS = ("direction", "residual")


def residual_norm(model, tokenizer, prompts: Sequence[Conversation], layer: int) -> float:
    """Mean L2 norm of the residual stream at `layer` over every token of `prompts`."""
    acts = extract(model, tokenizer, prompts, layers=[layer], read="all_tokens", progress=False)
    return float(acts.tensor[:, 0].float().norm(dim=-1).mean())


def steering_vector(
    direction: torch.Tensor, coefficient: float, units: Units, norm: float | None
) -> torch.Tensor:
    """The vector added for `coefficient` in `units` (`norm`: the residual norm, for "residual")."""
    if units == "direction":
        return coefficient * direction.float()
    if units == "residual":
        if norm is None or norm <= 0:
            raise ValueError("residual units need the layer's (positive) mean residual norm")
        return coefficient * norm * torch.nn.functional.normalize(direction.float(), dim=0)
    raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")


def without_system(conversation: Conversation) -> Conversation:
    """The conversation as the model sees it by default: user and assistant turns only."""
    return [m for m in conversation if m["role"] != "system"]


def contrast_direction(
    model,
    tokenizer,
    items: Sequence[ContrastItem],
    layers: Sequence[int] | None = None,
    meta: dict | None = None,
) -> DirectionStack:
    """Diff-in-means (elicited minus suppressed) of the contrast responses read response-averaged
    WITHOUT their system prompts: the direction is then carried by the responses, not by the
    instruction that produced them (which the steered model never sees)."""
    conversations = [without_system(item.conversation) for item in items]
    acts = extract(model, tokenizer, conversations, layers=layers, read="response_mean", progress=False)
    labels = torch.tensor([item.label for item in items])
    return DirectionStack(list(acts.layers), diff_in_means(acts.tensor.float(), labels), dict(meta or {}))


def fit_readout(
    acts: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[object],
    layer: int,
    folds: int = 5,
    name: str = "probe",
) -> tuple[LinearReadout, dict]:
    """A logistic probe on `[n, d]` activations, its accuracy by question-grouped cross-validation
    (no question in both train and test folds), then refitted on every row. Returns the read-out
    and `{"accuracy", "fold_accuracy", "folds", "n", "positives"}`."""
    x, y = acts.double().numpy(), labels.numpy().astype(int)
    if len(set(y)) < 2:
        raise ValueError("the read-out needs rows of both labels")
    n_groups = len(set(groups))
    folds = min(folds, n_groups)
    if folds < 2:
        raise ValueError(f"held-out accuracy needs at least two questions, got {n_groups}")
    scores, weights = [], []
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups=list(groups)):
        if len(set(y[train])) < 2:
            continue
        probe, _, _ = fit_logistic(x[train], y[train])
        scores.append(float(probe.score(x[test], y[test])))
        weights.append(len(test))
    _, w, b = fit_logistic(x, y)
    accuracy = float(np.average(scores, weights=weights)) if scores else float("nan")
    info = {
        "accuracy": accuracy,
        "fold_accuracy": scores,
        "folds": len(scores),
        "n": len(y),
        "positives": int(y.sum()),
    }
    return LinearReadout(layer, w, b, name), info
