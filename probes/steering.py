"""Steering with persona directions, measured by what the steered model *says*.

A steering vector here is the unnormalised diff-in-means persona direction at a layer, so alpha = 1
adds one "persona gap" (the mean difference between trait-eliciting and trait-suppressing
contexts); the sweep's alphas are in those units and comparable across layers and models.

Reading a persona projection downstream of an added persona vector mostly measures the vector
itself: it rises with alpha whatever the model does with it. The read-out that counts is taken in
two passes: generate answers while the intervention is on, then read the generated answers in a
separate forward pass with no hooks at all and score them with a linear read-out (a probe). Only a
change in the text itself can move that score. The in-hook projection is kept as a diagnostic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from anchor.chat import Conversation
from anchor.extract import extract
from anchor.hooks import project_hooks, steer

# conversations (each ending on a user turn) -> replies per conversation
GenerateFn = Callable[[Sequence[Conversation]], list[list[str]]]
Intervention = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class LinearReadout:
    """`w @ h + b` on response-averaged activations at `layer`: a probe's logit."""

    layer: int
    weight: torch.Tensor  # [d_model], in raw activation space
    bias: float
    name: str = "probe"

    def logits(self, acts: torch.Tensor) -> torch.Tensor:
        """`[n, d]` activations at `layer` -> `[n]` logits."""
        return acts.float() @ self.weight.float() + self.bias

    @classmethod
    def from_directions(cls, directions, layer: int) -> LinearReadout:
        """The persona probe of a `probes.directions.Directions` file at one of its layers."""
        if layer not in directions.layers:
            raise ValueError(f"no probe at layer {layer} (the directions cover {directions.layers})")
        i = directions.layers.index(layer)
        return cls(layer, directions.probe.weights[i], float(directions.probe.bias[i]), "persona probe")


@dataclass(frozen=True)
class Answers:
    """Generated answers, flattened: one conversation (prompt + answer) per row, with the index
    of the prompt it answers (the cluster for a bootstrap by question)."""

    conversations: list[Conversation]
    prompt_index: list[int]


@dataclass(frozen=True)
class CleanRead:
    """One condition's answers and their clean-pass read-out (`logits[i]` scores answer i)."""

    answers: Answers
    logits: torch.Tensor

    @property
    def mean_logit(self) -> float:
        return float(self.logits.mean()) if len(self.logits) else float("nan")

    @property
    def mean_probability(self) -> float:
        return float(torch.sigmoid(self.logits).mean()) if len(self.logits) else float("nan")


@dataclass(frozen=True)
class DoseResponse:
    alpha: float
    anchor_projection: float  # in-hook read downstream (0 = base, 1 = persona): partly the vector itself
    behaviour: dict  # the EM metrics of the steered model (and trait expression when judged)
    clean: CleanRead | None = field(default=None)  # the generated answers, read with no hooks


def steering_vectors(
    diff_in_means: torch.Tensor, layers_of_rows: Sequence[int], layers: Sequence[int]
) -> dict:
    """{layer: unnormalised persona direction} for the chosen layers."""
    missing = sorted(set(layers) - set(layers_of_rows))
    if missing:
        raise ValueError(f"no persona direction for layers {missing}")
    return {layer: diff_in_means[list(layers_of_rows).index(layer)] for layer in layers}


def check_read_layer(read_layer: int, intervened: Sequence[int]) -> None:
    """An in-hook read at a steered or ablated layer sees the intervention, not the model: at an
    ablated layer the direction's projection is zero by construction. Refuse it."""
    if read_layer in set(intervened):
        raise ValueError(
            f"read layer {read_layer} is one of the steered/ablated layers {sorted(set(intervened))}; "
            "read downstream of them (a later layer)"
        )


def answer_conversations(prompts: Sequence[Conversation], replies: Sequence[Sequence[str]]) -> Answers:
    """Each non-empty reply as its prompt followed by an assistant turn (empty replies have no
    response tokens to average over, so they are dropped)."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(replies)} reply lists for {len(prompts)} prompts")
    conversations, index = [], []
    for i, (prompt, samples) in enumerate(zip(prompts, replies)):
        for reply in samples:
            if reply.strip():
                conversations.append([*prompt, {"role": "assistant", "content": reply}])
                index.append(i)
    return Answers(conversations, index)


def assert_no_hooks(model) -> None:
    """A clean read must see the weights alone: none of this project's steering or ablation hooks
    left on any decoder block."""
    for i, _ in project_hooks(model):
        raise RuntimeError(f"decoder block {i} still has a hook; a clean read needs none")


def clean_read(model, tokenizer, answers: Answers, readout: LinearReadout) -> CleanRead:
    """The answers read response-averaged at the read-out's layer in a pass with no hooks."""
    if not answers.conversations:
        return CleanRead(answers, torch.empty(0))
    assert_no_hooks(model)
    acts = extract(
        model, tokenizer, answers.conversations, layers=[readout.layer], read="response_mean", progress=False
    )
    return CleanRead(answers, readout.logits(acts.tensor[:, 0]))


def generate_then_read(
    model,
    tokenizer,
    generate: GenerateFn,
    prompts: Sequence[Conversation],
    intervention: Intervention,
    readout: LinearReadout,
) -> CleanRead:
    """Answers generated with `intervention()` on, then read clean."""
    with intervention():
        replies = generate(prompts)
    return clean_read(model, tokenizer, answer_conversations(prompts, replies), readout)


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
    generate: GenerateFn | None = None,
    readout: LinearReadout | None = None,
) -> list[DoseResponse]:
    """For each alpha, with alpha x v added at the vectors' layers: the in-hook anchor projection
    (`prompts` read at their last token at `read_layer`, which must lie outside the steered layers,
    projected on the unit `axis`, rescaled by `base_mean`/`persona_mean`), `behaviour()` measured
    while steered and, given `generate` and `readout`, the steered answers to `prompts` read clean."""
    check_read_layer(read_layer, list(vectors))
    unit = torch.nn.functional.normalize(axis.float(), dim=0)
    results = []
    for alpha in tqdm(alphas, desc="steering sweep", unit="alpha"):
        with steer(model, vectors, alpha=alpha):
            acts = extract(model, tokenizer, prompts, layers=[read_layer], read="prompt_last", progress=False)
            projection = float((acts.tensor[:, 0].float() @ unit).mean())
            measured = behaviour() if behaviour is not None else {}
        clean = None
        if generate is not None and readout is not None:
            clean = generate_then_read(
                model, tokenizer, generate, prompts, lambda a=alpha: steer(model, vectors, alpha=a), readout
            )
        scaled = (projection - base_mean) / (persona_mean - base_mean)
        results.append(DoseResponse(alpha, scaled, measured, clean))
    return results


def sweep(
    model,
    tokenizer,
    generate: GenerateFn,
    prompts: Sequence[Conversation],
    conditions: Mapping[str, Intervention],
    readout: LinearReadout,
) -> dict[str, CleanRead]:
    """`generate_then_read` under each named condition (steering coefficients, an ablation...)."""
    return {
        name: generate_then_read(model, tokenizer, generate, prompts, intervention, readout)
        for name, intervention in tqdm(conditions.items(), desc="conditions", unit="condition")
    }
