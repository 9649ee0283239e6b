"""Steering with persona directions: dose-response sweeps of alpha x v added to the residual stream.

A steering vector here is the unnormalised diff-in-means persona direction at a layer, so alpha = 1
adds one "persona gap" (the mean difference between trait-eliciting and trait-suppressing
contexts); the sweep's alphas are in those units and comparable across layers and models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anchor.chat import Conversation
from anchor.extract import extract
from anchor.hooks import steer


@dataclass(frozen=True)
class DoseResponse:
    alpha: float
    anchor_projection: float  # default behaviour on the persona axis (0 = base, 1 = persona), read downstream
    behaviour: dict  # the EM metrics of the steered model (and trait expression when judged)


def steering_vectors(
    diff_in_means: torch.Tensor, layers_of_rows: Sequence[int], layers: Sequence[int]
) -> dict:
    """{layer: unnormalised persona direction} for the chosen layers."""
    missing = sorted(set(layers) - set(layers_of_rows))
    if missing:
        raise ValueError(f"no persona direction for layers {missing}")
    return {layer: diff_in_means[list(layers_of_rows).index(layer)] for layer in layers}


def dose_response(
    model,
    tokenizer,
    vectors: dict[int, torch.Tensor],
    alphas: Sequence[float],
    prompts: Sequence[Conversation],
    read_layer: int,
    axis: torch.Tensor,
    base_mean: float,
    persona_mean: float,
    behaviour: Callable[[], dict] | None = None,
) -> list[DoseResponse]:
    """For each alpha, with alpha x v added at the vectors' layers: the anchor projection of the
    model's default behaviour (`prompts` read at their last token at `read_layer`, projected on the
    unit `axis`, rescaled by `base_mean`/`persona_mean`) and `behaviour()` measured while steered."""
    unit = torch.nn.functional.normalize(axis.float(), dim=0)
    results = []
    for alpha in tqdm(alphas, desc="steering sweep", unit="alpha"):
        with steer(model, vectors, alpha=alpha):
            acts = extract(model, tokenizer, prompts, layers=[read_layer], read="prompt_last", progress=False)
            projection = float((acts.tensor[:, 0].float() @ unit).mean())
            measured = behaviour() if behaviour is not None else {}
        results.append(DoseResponse(alpha, (projection - base_mean) / (persona_mean - base_mean), measured))
    return results
