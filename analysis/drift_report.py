"""Drift metrics of a whole experiment, computed from the activation stores of its EM runs.

Every EM run recorded the same probe sets at every checkpoint: `persona_contrast` (fixed contrast
responses, read response-averaged: gives v_t), `em_questions` and `persona_questions` (prompts with
no system prompt, read at the last prompt token: the model's default behaviour), `neutral`
(response-averaged fixed conversations: for CKA). The reference r is step 0 of the persona model's
EM run, i.e. the persona model before EM; "base" is step 0 of the base model's EM run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis import drift
from anchor.store import ActivationStore
from train.em import checkpoints

PERSONA, BASE, CONTROL = "persona", "base", "control"


def _acts(run: Path, checkpoint: str, probe: str) -> torch.Tensor:
    return ActivationStore(run / "activations").load(f"{checkpoint}/{probe}").tensor.float()


def default_behaviour(run: Path, checkpoint: str) -> torch.Tensor:
    """`[n, L, d]`: the model's state as it starts answering prompts without a system prompt."""
    return torch.cat([_acts(run, checkpoint, "em_questions"), _acts(run, checkpoint, "persona_questions")])


def step_of(checkpoint: str) -> int:
    return int(checkpoint.rsplit("-", 1)[1])


def bootstrap_band(values: torch.Tensor, n_boot: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile 95% band of the item mean of `values` `[n, L]`, per layer."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(len(values), (n_boot, len(values)), generator=g)
    means = values[index].mean(1)  # [B, L]
    return torch.quantile(means, 0.025, dim=0), torch.quantile(means, 0.975, dim=0)


@dataclass
class AnchorAxis:
    """The reference persona direction and the two ends of the anchor scale, read from a run."""

    contrast: torch.Tensor  # [n, L, d] contrast activations of the persona model before EM
    v_r: torch.Tensor  # [L, d]
    base: torch.Tensor  # [n, L] base model's default behaviour projected on v_r (the 0)
    persona: torch.Tensor  # [n, L] persona model's, before EM (the 1)

    def anchor(self, acts: torch.Tensor) -> torch.Tensor:
        """`[n, L]` per-item anchor projections of default-behaviour activations."""
        return drift.rescale(drift.projections(acts, self.v_r), self.base.mean(0), self.persona.mean(0))


def anchor_axis(persona_run: Path, base_run: Path, labels: torch.Tensor) -> AnchorAxis:
    """v_r from the persona run's step 0 contrast reads; its 0 and 1 from step 0 of the base and
    persona runs."""
    r = checkpoints(persona_run)[0]
    contrast = _acts(persona_run, r, "persona_contrast")
    v_r = drift.persona_direction(contrast, labels)
    return AnchorAxis(
        contrast,
        v_r,
        drift.projections(default_behaviour(base_run, checkpoints(base_run)[0]), v_r),
        drift.projections(default_behaviour(persona_run, r), v_r),
    )


def compute_drift(
    runs: Mapping[str, Path],
    labels: torch.Tensor,
    pairs: Sequence[object],
    subspace_k: int = 3,
    misalignment: torch.Tensor | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> dict:
    """All drift metrics, per run, checkpoint and layer, as JSON-ready lists.

    `runs` maps "persona", "base" and optionally "control" to EM run directories; `labels` and
    `pairs` describe the contrast items (1 = elicited; pair keys group an elicited/suppressed pair);
    `misalignment` is an optional `[L, d]` misalignment direction."""
    reference = runs[PERSONA]
    r = checkpoints(reference)[0]
    axis = anchor_axis(reference, runs[BASE], labels)
    contrast_r, v_r = axis.contrast, axis.v_r
    probe_w, probe_b = drift.fit_reference_probe(contrast_r, labels)
    k = min(subspace_k, len(set(pairs)) - 1)
    q_r = drift.contrast_subspace(contrast_r, labels, pairs, k) if k >= 1 else None
    base_proj, persona_proj = axis.base, axis.persona
    base_mean, persona_mean = base_proj.mean(0), persona_proj.mean(0)
    # The layer where character training moved default behaviour furthest along v_r, in units of
    # the spread of the items: the anchor is measured where there is one to measure.
    spread = torch.sqrt((base_proj.var(0) + persona_proj.var(0)) / 2).clamp_min(1e-6)
    separation = (persona_mean - base_mean) / spread
    best = int(separation.argmax())

    out: dict = {
        "reference": {"run": PERSONA, "checkpoint": r},
        "n_layers": int(v_r.shape[0]),
        "best_layer": best,
        "separation": separation.tolist(),
        "runs": {},
    }
    for name, run in runs.items():
        ckpts = checkpoints(run)
        start_questions = _acts(run, ckpts[0], "em_questions")
        start_neutral = _acts(run, ckpts[0], "neutral")
        series: dict[str, list] = {
            key: []
            for key in (
                "direction_stability",
                "anchor_projection",
                "anchor_low",
                "anchor_high",
                "probe_transfer",
                "subspace_overlap",
                "em_shift_norm",
                "em_shift_cos_persona",
                "em_shift_cos_misalignment",
                "cka_to_start",
            )
        }
        for c in ckpts:
            contrast = _acts(run, c, "persona_contrast")
            v_t = drift.persona_direction(contrast, labels)
            scaled = axis.anchor(default_behaviour(run, c))
            low, high = bootstrap_band(scaled, n_boot, seed)
            shift = drift.em_shift(_acts(run, c, "em_questions"), start_questions)
            series["direction_stability"].append(drift.direction_stability(v_t, v_r).tolist())
            series["anchor_projection"].append(scaled.mean(0).tolist())
            series["anchor_low"].append(low.tolist())
            series["anchor_high"].append(high.tolist())
            series["probe_transfer"].append(drift.probe_transfer(probe_w, probe_b, contrast, labels).tolist())
            series["subspace_overlap"].append(
                drift.subspace_overlap(drift.contrast_subspace(contrast, labels, pairs, k), q_r).tolist()
                if q_r is not None
                else None
            )
            series["em_shift_norm"].append(shift.norm(dim=-1).tolist())
            series["em_shift_cos_persona"].append(drift.cosine(shift, v_r).nan_to_num().tolist())
            series["em_shift_cos_misalignment"].append(
                drift.cosine(shift, misalignment).nan_to_num().tolist() if misalignment is not None else None
            )
            series["cka_to_start"].append(drift.linear_cka(_acts(run, c, "neutral"), start_neutral).tolist())
        steps = [step_of(c) for c in ckpts]
        anchor_best = [a[best] for a in series["anchor_projection"]]
        out["runs"][name] = {
            "run_dir": str(run),
            "checkpoints": ckpts,
            "steps": steps,
            **series,
            "drift_auc": drift.drift_auc(anchor_best, steps),
        }
    auc = {name: run["drift_auc"] for name, run in out["runs"].items()}
    out["anchor_strength"] = {
        "vs_base": drift.anchor_strength(auc[PERSONA], auc[BASE]),
        "vs_control": drift.anchor_strength(auc[PERSONA], auc[CONTROL]) if CONTROL in auc else None,
    }
    return out
