"""Persona directions per layer from labelled activations: diff-in-means (the persona vector),
the first principal component of paired differences (RepE), and a logistic-regression probe with
held-out accuracy and AUROC.

Held-out splits are by question, never by row: the two polarities of one question share most of
their context, so a row-level split would leak and flatter the probe.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anchor.hooks import hook_name
from anchor.store import atomic_write_bytes

METHODS = ("diff_in_means", "pca", "probe")


def diff_in_means(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`[n, L, d]`, labels 0/1 -> `[L, d]`: mean(label 1) - mean(label 0)."""
    labels = labels.bool()
    if labels.all() or not labels.any():
        raise ValueError("diff-in-means needs rows of both labels")
    return acts[labels].mean(0) - acts[~labels].mean(0)


def pca_direction(acts: torch.Tensor, labels: torch.Tensor, groups: Sequence[object]) -> torch.Tensor:
    """First principal component of per-group differences (mean of the group's label-1 rows minus
    its label-0 rows), sign-aligned with diff-in-means; `[L, d]`, unit norm."""
    labels = labels.bool()
    diffs = []
    for g in dict.fromkeys(groups):
        rows = torch.tensor([x == g for x in groups])
        pos, neg = rows & labels, rows & ~labels
        if pos.any() and neg.any():
            diffs.append(acts[pos].mean(0) - acts[neg].mean(0))
    if len(diffs) < 2:
        raise ValueError("PCA needs at least two groups with both labels")
    stacked = torch.stack(diffs, dim=1)  # [L, groups, d]
    # Uncentered: the shared shift between the polarities is the signal, not noise to remove.
    _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
    direction = vh[:, 0]
    sign = torch.sign((direction * diff_in_means(acts, labels)).sum(-1, keepdim=True))
    return direction * torch.where(sign == 0, 1.0, sign)


@dataclass
class ProbeFit:
    weights: torch.Tensor  # [L, d], in activation space (scaler folded in)
    bias: torch.Tensor  # [L]
    accuracy: list[float]
    auroc: list[float]


def fit_logistic(x, y, c: float = 0.1):
    """A standardised logistic regression on `x` `[n, d]` (numpy), and its weights `[d]` and bias
    folded back into activation space, so `w @ h + b` is the probe's logit on a raw activation."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=c)).fit(x, y)
    scaler, logistic = probe
    w = logistic.coef_[0] / scaler.scale_
    return (
        probe,
        torch.tensor(w, dtype=torch.float32),
        float(logistic.intercept_[0] - (w * scaler.mean_).sum()),
    )


def fit_probes(
    acts: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[object],
    test_fraction: float = 0.25,
    seed: int = 0,
) -> ProbeFit:
    """One standardised logistic-regression probe per layer, trained on a question-level split and
    scored on the held-out questions."""
    y = labels.numpy()
    split = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(split.split(acts[:, 0].numpy(), y, groups=list(groups)))
    if len(set(y[test])) < 2 or len(set(y[train])) < 2:
        raise ValueError("the held-out split lacks one label; use more questions")
    weights, biases, accuracy, auroc = [], [], [], []
    for layer in range(acts.shape[1]):
        x = acts[:, layer].double().numpy()
        probe, w, b = fit_logistic(x[train], y[train])
        accuracy.append(float(probe.score(x[test], y[test])))
        auroc.append(float(roc_auc_score(y[test], probe.decision_function(x[test]))))
        weights.append(w)
        biases.append(b)
    return ProbeFit(torch.stack(weights), torch.tensor(biases), accuracy, auroc)


@dataclass
class Directions:
    """Per-layer persona directions, named by TransformerLens hook points."""

    layers: list[int]
    diff_in_means: torch.Tensor  # [L, d], unnormalised (its norm is informative)
    pca: torch.Tensor  # [L, d], unit
    probe: ProbeFit
    meta: dict = field(default_factory=dict)

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(layer) for layer in self.layers]

    def unit(self, method: str = "diff_in_means") -> torch.Tensor:
        vectors = {"diff_in_means": self.diff_in_means, "pca": self.pca, "probe": self.probe.weights}[method]
        return torch.nn.functional.normalize(vectors, dim=-1)

    def best_layer(self) -> int:
        """The layer whose probe does best on held-out questions (ties: the larger AUROC)."""
        best = max(range(len(self.layers)), key=lambda i: (self.probe.accuracy[i], self.probe.auroc[i]))
        return self.layers[best]

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {}
        for i, name in enumerate(self.hook_names):
            tensors[f"{name}.diff_in_means"] = self.diff_in_means[i].contiguous()
            tensors[f"{name}.pca"] = self.pca[i].contiguous()
            tensors[f"{name}.probe"] = self.probe.weights[i].contiguous()
        tensors["probe_bias"] = self.probe.bias.contiguous()
        header = {
            "layers": json.dumps(self.layers),
            "probe_accuracy": json.dumps(self.probe.accuracy),
            "probe_auroc": json.dumps(self.probe.auroc),
            "meta": json.dumps(self.meta),
        }
        path = Path(path)
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Directions:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata()
                layers = json.loads(header["layers"])
                names = [hook_name(layer) for layer in layers]

                def stack(method: str) -> torch.Tensor:
                    return torch.stack([f.get_tensor(f"{name}.{method}") for name in names])

                probe = ProbeFit(
                    stack("probe"),
                    f.get_tensor("probe_bias"),
                    json.loads(header["probe_accuracy"]),
                    json.loads(header["probe_auroc"]),
                )
                return cls(layers, stack("diff_in_means"), stack("pca"), probe, json.loads(header["meta"]))
        except Exception as err:
            raise ValueError(f"{path}: not a directions file ({err})") from err


def fit_directions(
    acts: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[object],
    layers: Sequence[int],
    test_fraction: float = 0.25,
    seed: int = 0,
    meta: dict | None = None,
) -> Directions:
    return Directions(
        layers=list(layers),
        diff_in_means=diff_in_means(acts, labels),
        pca=pca_direction(acts, labels, groups),
        probe=fit_probes(acts, labels, groups, test_fraction, seed),
        meta=dict(meta or {}),
    )


@dataclass
class DirectionStack:
    """One direction per layer (`vectors[i]` is at `layers[i]`), e.g. the misalignment direction.

    Saved as safetensors (`direction`, `[L, d]`, with `layers` and `meta` in the header). Published
    `.pt` tensors load too, and `export_pt` writes them, in two layouts that differ by one row:

    - Persona Vectors: `[n_layers + 1, d_model]`, indexed like HF `hidden_states`: row 0 is the
      embeddings, row i the output of block i - 1 (`blocks.{i-1}.hook_resid_post`);
    - Assistant Axis: `[n_layers, d_model]`, row i the output of block i.

    A bare tensor does not say which it is, so `load` needs the model's depth to tell: off by one
    layer is a silent error that still steers and still projects. (Files made with transformers
    releases that applied the final norm to the last `hidden_states` entry hold a last row in
    post-norm space; the hook here reads before that norm, so treat the last layer with care.)"""

    layers: list[int]
    vectors: torch.Tensor  # [L, d], unnormalised
    meta: dict = field(default_factory=dict)

    def at(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise ValueError(f"no direction at layer {layer} (have {self.layers})")
        return self.vectors[self.layers.index(layer)]

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        header = {"layers": json.dumps(self.layers), "meta": json.dumps(self.meta)}
        atomic_write_bytes(
            path, safetensors_bytes({"direction": self.vectors.contiguous().float()}, metadata=header)
        )
        return path

    def export_pt(self, path: str | os.PathLike, n_layers: int, with_embedding_row: bool) -> Path:
        """Write a bare float32 `.pt` tensor in a published layout: `[n_layers + 1, d]` with a
        leading embedding row (Persona Vectors) or `[n_layers, d]` (Assistant Axis).

        The embedding row is all zeros: no direction is read at the embeddings here, and zeros
        make a consumer that steers with row 0 do nothing rather than spread NaNs. Every layer
        0..n_layers-1 must be present, since these layouts name a layer only by its row."""
        if n_layers < 1:
            raise ValueError(f"{path}: n_layers must be >= 1, got {n_layers}")
        missing = sorted(set(range(n_layers)) - set(self.layers))
        extra = sorted(set(self.layers) - set(range(n_layers)))
        if missing or extra:
            raise ValueError(
                f"{path}: the published layouts hold one row per layer of a {n_layers}-layer model; "
                f"this stack lacks layers {missing} and has out-of-range layers {extra}"
            )
        rows = torch.stack([self.at(layer) for layer in range(n_layers)]).float()
        if with_embedding_row:
            rows = torch.cat([torch.zeros_like(rows[:1]), rows])
        buffer = io.BytesIO()
        torch.save(rows.contiguous(), buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, n_layers: int | None = None) -> DirectionStack:
        """A saved stack, or a published `.pt` tensor aligned to layers by `n_layers` (the model's
        depth, see the class docstring). Without `n_layers` a `.pt` row i is taken to be layer i,
        and `meta["alignment"]` says that this was assumed rather than checked."""
        path = Path(path)
        if path.suffix == ".pt":
            return cls._load_pt(path, n_layers)
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                stack = cls(
                    json.loads(header["layers"]),
                    f.get_tensor("direction"),
                    json.loads(header.get("meta", "{}")),
                )
        except Exception as err:
            raise ValueError(f"{path}: not a direction stack ({err})") from err
        if n_layers is not None and any(not 0 <= layer < n_layers for layer in stack.layers):
            raise ValueError(f"{path}: layers {stack.layers} do not fit a {n_layers}-layer model")
        return stack

    @classmethod
    def _load_pt(cls, path: Path, n_layers: int | None) -> DirectionStack:
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a direction stack ({err})") from err
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2 or tensor.shape[0] == 0:
            found = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{path}: expected a [layers, d_model] tensor, got {found}")
        layers, rows, meta = cls._align_rows(tuple(tensor.shape), n_layers, path)
        return cls(layers, tensor[rows].float(), {"source": str(path), **meta})

    @staticmethod
    def _align_rows(
        shape: tuple[int, ...], n_layers: int | None, path: Path
    ) -> tuple[list[int], slice, dict]:
        """Which rows of a published `[rows, d]` tensor are which layers: (layers, rows to keep, meta)."""
        rows, d = shape
        if n_layers is None:
            assumed = "assumed, not checked: row i read as layer i (pass n_layers to check the layout)"
            return list(range(rows)), slice(None), {"layout": "unknown", "alignment": assumed}
        if rows == n_layers + 1:
            aligned = "row 0 (embeddings) dropped; row i read as layer i - 1"
            return list(range(n_layers)), slice(1, None), {"layout": "persona_vectors", "alignment": aligned}
        if rows == n_layers:
            aligned = "row i read as layer i"
            return list(range(n_layers)), slice(None), {"layout": "assistant_axis", "alignment": aligned}
        raise ValueError(
            f"{path}: a [{rows}, {d}] tensor fits neither published layout for a {n_layers}-layer model: "
            f"[{n_layers + 1}, d_model] (Persona Vectors, embeddings first) or [{n_layers}, d_model] "
            "(Assistant Axis, one row per block)"
        )
