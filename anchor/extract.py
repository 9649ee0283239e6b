"""Batched residual-stream reads: the toolkit's hot path.

Every checkpoint of every run is read on the same probe sets, so this is where time goes. The
reduction (last prompt token, or mean over the response) happens inside the hook on the model's
device, only `[batch, d_model]` per layer leaves it, the LM head never runs, and the forward pass
stops after the deepest requested block.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anchor import timings
from anchor.batching import length_buckets
from anchor.chat import (
    ChatBatch,
    Conversation,
    PaddingSide,
    RenderedChat,
    pad_chats,
    pad_token_id,
    render_chats,
)
from anchor.hooks import decoder_body, hook_name, hooks, resolve_layers

ReadMode = Literal["response_mean", "prompt_last", "all_tokens"]
READ_MODES: tuple[str, ...] = ("response_mean", "prompt_last", "all_tokens")


@dataclass
class Activations:
    """Residual-stream reads of a set of conversations.

    `tensor` is float32 `[n, n_layers, d_model]` for the pooled reads. For `all_tokens` it is the
    rows of every conversation's tokens concatenated, `[sum(lengths), n_layers, d_model]`, with
    `lengths` giving each conversation's token count (see `per_conversation`).
    """

    tensor: torch.Tensor
    layers: list[int]
    read: str
    ids: list[str]
    prompt_hash: str
    lengths: list[int] | None = None

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(layer) for layer in self.layers]

    def layer(self, layer: int) -> torch.Tensor:
        """`[n, d_model]` at one model layer (its index in the model, not in `layers`)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not read; these were: {self.layers}")
        return self.tensor[:, self.layers.index(layer)]

    def per_conversation(self) -> list[torch.Tensor]:
        if self.lengths is None:
            return list(self.tensor)
        return list(self.tensor.split(self.lengths))


def prompt_set_hash(conversations: Sequence[Conversation]) -> str:
    """Identifies a probe set, so activations of different checkpoints can be checked to match."""
    return hashlib.sha256(json.dumps(list(conversations), sort_keys=True).encode()).hexdigest()[:16]


# Token slots per forward pass when the caller gives none. On a CPU a narrow pass keeps its
# activations in cache: with the default model, budgets of 256-2,048 slots read 1.6-1.8x faster
# than 8,192 (BENCHMARKS.md, `bench_extract.py --sweep`); a GPU fills better with wide passes.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 8192


def default_batch_tokens(device: torch.device) -> int:
    return CPU_BATCH_TOKENS if device.type == "cpu" else GPU_BATCH_TOKENS


class _StopForward(Exception):
    """Raised after the deepest requested block: the rest of the model is not needed."""


class _Reader:
    """Per-layer reducers that read one batch at a time. On a model split over devices each block
    reduces on its own device (the selector is copied there once per batch and device); the
    reduced rows meet on one device only in `collect`, so no block waits on a cross-device copy."""

    def __init__(self, layers: list[int], read: str) -> None:
        self.layers, self.read = layers, read
        self.results: dict[int, torch.Tensor] = {}

    def begin(self, batch: ChatBatch, device: torch.device) -> None:
        self.results = {}
        if self.read == "prompt_last":
            selector = batch.prompt_last_mask.float().argmax(1)
        elif self.read == "response_mean":
            mask = batch.response_mask.float()
            selector = mask / mask.sum(1, keepdim=True)
        else:
            selector = batch.attention_mask.bool()
        self.selectors = {device: selector.to(device)}

    def _selector(self, device: torch.device) -> torch.Tensor:
        if device not in self.selectors:
            self.selectors[device] = next(iter(self.selectors.values())).to(device)
        return self.selectors[device]

    def fn(self, layer: int):
        last = layer == self.layers[-1]

        def read(hidden: torch.Tensor) -> None:
            selector = self._selector(hidden.device)
            if self.read == "prompt_last":
                reduced = hidden[torch.arange(hidden.shape[0], device=hidden.device), selector]
            elif self.read == "response_mean":
                reduced = torch.einsum("bt,btd->bd", selector, hidden.float())
            else:
                reduced = hidden[selector]
            self.results[layer] = reduced
            if last:
                raise _StopForward

        return read

    def collect(self) -> torch.Tensor:
        first = self.results[self.layers[0]].device
        return torch.stack([self.results[layer].to(first) for layer in self.layers], dim=1).float().cpu()


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    layers: int | Sequence[int] | None = None,
    read: ReadMode = "response_mean",
    batch_tokens: int | None = None,
    padding_side: PaddingSide = "right",
    ids: Sequence[str] | None = None,
    bucket: bool = True,
    progress: bool = True,
) -> Activations:
    """Read `blocks.{layer}.hook_resid_post` for each conversation (None = all layers).

    `batch_tokens` bounds rows x longest row per forward pass (None: `default_batch_tokens` of the
    model's device). `bucket=False` batches in input order instead of by length (only to measure
    what bucketing buys).
    """
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {', '.join(READ_MODES)}, got {read!r}")
    if ids is not None and len(ids) != len(conversations):
        raise ValueError(f"{len(ids)} ids for {len(conversations)} conversations")
    if not conversations:
        raise ValueError("no conversations to read")
    rendered = render_chats(tokenizer, conversations)
    if read == "response_mean":
        for index, r in enumerate(rendered):
            if r.response_start == r.response_end:
                raise ValueError(
                    f"conversation {index}: read='response_mean' needs a final assistant message"
                )
    pad_id = pad_token_id(tokenizer)
    tensor, chosen, lengths = read_rendered(
        model, rendered, layers, read, pad_id, batch_tokens, padding_side, bucket, progress
    )
    return Activations(
        tensor=tensor,
        layers=chosen,
        read=read,
        ids=list(ids) if ids is not None else [str(i) for i in range(len(rendered))],
        prompt_hash=prompt_set_hash(conversations),
        lengths=lengths if read == "all_tokens" else None,
    )


@torch.inference_mode()
def read_rendered(
    model: PreTrainedModel,
    rendered: Sequence[RenderedChat],
    layers: int | Sequence[int] | None,
    read: ReadMode,
    pad_id: int,
    batch_tokens: int | None = None,
    padding_side: PaddingSide = "right",
    bucket: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """The batched read behind `extract`, on already tokenised sequences. Returns the tensor (see
    `Activations`), the layers read and each sequence's token count as run."""
    chosen = resolve_layers(model, layers)
    device = next(model.parameters()).device
    batch_tokens = default_batch_tokens(device) if batch_tokens is None else batch_tokens
    body, reader = decoder_body(model), _Reader(chosen, read)

    # Causal attention: a read needs no token after the last one it averages or picks.
    if read == "prompt_last":
        rendered = [r.truncated(r.prompt_last + 1) for r in rendered]
    elif read == "response_mean":
        rendered = [r.truncated(r.response_end) for r in rendered]
    lengths = [len(r) for r in rendered]
    pooled: torch.Tensor | None = None
    ragged: list[torch.Tensor] = [torch.empty(0)] * len(rendered)
    bar = tqdm(total=sum(lengths), desc=f"extract {read}", unit="tok", unit_scale=True, disable=not progress)
    with hooks(model, {layer: reader.fn(layer) for layer in chosen}):
        for batch in length_buckets(lengths, batch_tokens, sort=bucket):
            padded = pad_chats([rendered[i] for i in batch], pad_id, padding_side)
            attention = padded.attention_mask.to(device)
            reader.begin(padded, device)
            try:
                body(
                    input_ids=padded.input_ids.to(device),
                    attention_mask=attention,
                    position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                    use_cache=False,
                )
            except _StopForward:
                pass
            values = reader.collect()
            if read == "all_tokens":
                for i, rows in zip(batch, values.split([lengths[i] for i in batch])):
                    ragged[i] = rows
            else:
                if pooled is None:
                    pooled = torch.empty(len(rendered), *values.shape[1:])
                pooled[batch] = values
            tokens = sum(lengths[i] for i in batch)
            bar.update(tokens)
            timings.count(tokens_read=tokens)
    bar.close()
    return (torch.cat(ragged) if read == "all_tokens" else pooled), chosen, lengths
