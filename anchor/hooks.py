"""Forward hooks on the residual stream of any HF causal LM, named as in TransformerLens.

`blocks.{layer}.hook_resid_post` is the output of decoder block `layer` (for the last block: the
residual before the final norm); `blocks.{layer}.hook_resid_pre` is its input. Every hook here is
installed by a context manager that removes it on every exit path, so an exception in the middle of
an experiment never leaves a model silently steered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HookPoint = Literal["resid_post", "resid_pre"]
HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def hook_name(layer: int, point: HookPoint = "resid_post") -> str:
    return f"blocks.{layer}.hook_{point}"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _n_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    text_config = getattr(config, "text_config", None)
    return getattr(text_config, "num_hidden_layers", None)


def _blocks_path(model: nn.Module) -> str:
    """Name of the decoder-block list: the shallowest ModuleList with one entry per layer
    (`model.layers` in Llama/Qwen/Gemma/Mistral, `transformer.h` in GPT-2, ...)."""
    n = _n_layers(model)
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n)
    ]
    if not candidates:
        raise ValueError(f"{type(model).__name__}: found no list of {n} decoder blocks to hook")
    return min(candidates, key=lambda name: (name.count("."), name))


def find_blocks(model: nn.Module) -> nn.ModuleList:
    base = unwrap(model)
    return base.get_submodule(_blocks_path(base))


def decoder_body(model: nn.Module) -> nn.Module:
    """The module that owns the block list (e.g. `LlamaModel`): running it skips the LM head."""
    base = unwrap(model)
    parent = _blocks_path(base).rpartition(".")[0]
    return base.get_submodule(parent) if parent else base


def resolve_layers(model: nn.Module, layers: int | Sequence[int] | None) -> list[int]:
    """Sorted unique non-negative layer indices; negative ones count from the end; None = all."""
    n = len(find_blocks(model))
    if layers is None:
        return list(range(n))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    for layer in chosen:
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range: the model has {n} blocks (0..{n - 1})")
    return sorted({layer % n for layer in chosen})


def _output_hook(fn: HookFn):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    hook.anchor_hook = True  # ours, so a clean read can check for this project's hooks alone
    return hook


def _input_hook(fn: HookFn):
    def hook(module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    hook.anchor_hook = True
    return hook


def project_hooks(model: nn.Module) -> list[tuple[int, object]]:
    """(block index, hook) for every hook this project installed on the decoder blocks; hooks a
    library installs for its own bookkeeping (e.g. output recording) are not counted."""
    found = []
    for i, block in enumerate(find_blocks(model)):
        for hook in [*block._forward_hooks.values(), *block._forward_pre_hooks.values()]:
            if getattr(hook, "anchor_hook", False):
                found.append((i, hook))
    return found


@contextmanager
def hooks(model: nn.Module, fns: Mapping[int, HookFn], point: HookPoint = "resid_post") -> Iterator[None]:
    """Run `fns[layer](hidden)` at the hook point of each layer; a returned tensor replaces the
    residual stream there. Removed on exit, exceptions included."""
    if point not in ("resid_post", "resid_pre"):
        raise ValueError(f"hook point must be 'resid_post' or 'resid_pre', got {point!r}")
    blocks = find_blocks(model)
    handles = []
    try:
        for layer, fn in fns.items():
            (index,) = resolve_layers(model, layer)
            if point == "resid_post":
                handles.append(blocks[index].register_forward_hook(_output_hook(fn)))
            else:
                handles.append(blocks[index].register_forward_pre_hook(_input_hook(fn), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _per_layer(vectors: torch.Tensor | Mapping[int, torch.Tensor], layers, model: nn.Module, what: str):
    """Normalise the vector arguments of `steer`/`ablate` to {layer: tensor}."""
    if isinstance(vectors, Mapping):
        if layers is not None:
            raise ValueError(f"give either a {{layer: {what}}} mapping or layers, not both")
        return {resolve_layers(model, layer)[0]: v for layer, v in vectors.items()}
    if layers is None:
        raise ValueError(f"layers is required when {what} is a tensor")
    chosen = [layers] if isinstance(layers, int) else list(layers)
    if vectors.dim() == 2 and what == "vectors":
        if len(vectors) != len(chosen):
            raise ValueError(f"vectors has {len(vectors)} rows but {len(chosen)} layers were given")
        return {resolve_layers(model, layer)[0]: v for layer, v in zip(chosen, vectors)}
    return {index: vectors for index in resolve_layers(model, chosen)}


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def block_device(model: nn.Module, layer: int) -> torch.device:
    """Where decoder block `layer` runs. A model split over devices (`device_map="auto"`) holds
    its blocks on several, so per-layer tensors of a hook must live on their own block's device."""
    block = find_blocks(model)[layer]
    param = next(block.parameters(), None)
    return param.device if param is not None else next(model.parameters()).device


@contextmanager
def steer(
    model: nn.Module,
    vectors: torch.Tensor | Mapping[int, torch.Tensor],
    alpha: float = 1.0,
    layers: int | Sequence[int] | None = None,
    positions: Literal["all", "response"] = "all",
    response_mask: torch.Tensor | None = None,
) -> Iterator[None]:
    """Add `alpha * v` to `resid_post` at each layer, during any forward pass (generate, extraction,
    training: the addition is differentiable).

    `vectors`: one `[d_model]` vector for all `layers`, `[len(layers), d_model]`, or {layer: vector}.
    `positions="response"` steers only response tokens: those marked in `response_mask`
    (`[batch, seq]`) when it matches the pass; in cached decoding, every single-token step (the
    generated tokens) and never the prompt's prefill.
    """
    if positions not in ("all", "response"):
        raise ValueError(f"positions must be 'all' or 'response', got {positions!r}")
    dtype = _model_dtype(model)
    per_layer = {
        k: (alpha * v.to(device=block_device(model, k), dtype=torch.float32)).to(dtype)
        for k, v in _per_layer(vectors, layers, model, "vectors").items()
    }

    def make(delta: torch.Tensor) -> HookFn:
        mask = response_mask.to(delta.device) if response_mask is not None else None

        def add(hidden: torch.Tensor) -> torch.Tensor:
            if positions == "all":
                return hidden + delta
            if mask is not None and mask.shape == hidden.shape[:2]:
                return hidden + mask[..., None].to(hidden.dtype) * delta
            return hidden + delta if hidden.shape[1] == 1 else hidden

        return add

    with hooks(model, {layer: make(delta) for layer, delta in per_layer.items()}):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    directions: torch.Tensor | Mapping[int, torch.Tensor],
    layers: int | Sequence[int] | None = None,
) -> Iterator[None]:
    """Project directions out of `resid_post`: h <- h - Q Q^T h, Q an orthonormal basis of the
    directions (`[d_model]` or `[k, d_model]`, or {layer: those}), at every position."""

    def basis(d: torch.Tensor, device: torch.device) -> torch.Tensor:
        d = d.to(device=device, dtype=torch.float32).reshape(-1, d.shape[-1])
        q, _ = torch.linalg.qr(d.T)  # [d_model, k], orthonormal columns
        return q

    def make(q: torch.Tensor) -> HookFn:
        def project_out(hidden: torch.Tensor) -> torch.Tensor:
            h = hidden.float()
            return (h - (h @ q) @ q.T).to(hidden.dtype)

        return project_out

    per_layer = _per_layer(directions, layers, model, "directions")
    with hooks(model, {layer: make(basis(d, block_device(model, layer))) for layer, d in per_layer.items()}):
        yield


@contextmanager
def cap(
    model: nn.Module,
    axes: Mapping[int, torch.Tensor],
    floors: Mapping[int, float],
) -> Iterator[None]:
    """Activation capping (The Assistant Axis): at each layer, raise the residual stream's
    projection on the unit axis to at least `floors[layer]`, h <- h + max(0, floor - <h, a>) a, at
    every position; above the floor nothing changes, so the model keeps its range and is only
    stopped from sliding down the axis."""
    missing = sorted(set(axes) ^ set(floors))
    if missing:
        raise ValueError(f"cap needs an axis and a floor at the same layers; unmatched: {missing}")

    def make(axis: torch.Tensor, floor: float) -> HookFn:
        def raise_to_floor(hidden: torch.Tensor) -> torch.Tensor:
            h = hidden.float()
            shortfall = (floor - h @ axis).clamp_min(0)
            return (h + shortfall[..., None] * axis).to(hidden.dtype)

        return raise_to_floor

    fns = {}
    for layer, axis in axes.items():
        (index,) = resolve_layers(model, layer)
        unit = F.normalize(axis.to(device=block_device(model, index), dtype=torch.float32), dim=-1)
        fns[index] = make(unit, float(floors[layer]))
    with hooks(model, fns):
        yield
