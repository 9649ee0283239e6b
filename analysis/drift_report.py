"""Drift metrics of a whole experiment, computed from the activation stores of its EM runs, with
the held-out splits, intervals and null baselines that let each of them fail.

Every EM run recorded the same probe sets at every checkpoint:
- `persona_contrast_bare`: the contrast responses read response-averaged WITHOUT the system prompt
  that elicited or suppressed the trait, so the persona direction v_t is carried by the response
  text alone (the default for every persona-direction figure);
- `persona_contrast`: the same responses read with their system prompt (the Persona Vectors way),
  at the first and last checkpoint only, kept so the confound shows: there the direction mostly encodes which system prompt is present,
  which EM barely changes;
- `em_questions`, `persona_questions`: prompts with no system prompt, read at the last prompt token
  (the model's default behaviour);
- `neutral`: fixed conversations (for CKA).
The reference r is step 0 of the persona model's EM run (the persona model before EM); "base" is
step 0 of the base model's run.

Held out: the layer is chosen on one half of the default-behaviour prompts and every anchor number
is reported on the other half; probes are fitted on a question-level train split at r and scored on
held-out questions. Nulls, at the chosen layer: random directions u ~ N(0, Sigma) for projections
and cosines, refits with labels shuffled within each question for fitted figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupShuffleSplit

from analysis import drift
from analysis.interaction import interaction
from analysis.stats import bounds, estimate, null_percentile, unmeasured
from anchor.runs import checkpoints, em_store, step_of

PERSONA, BASE, CONTROL, BASE_CONTROL = "persona", "base", "control", "base_control"
# The 2x2 (starting model x data) and the runs' folders in a tracked run: persona and base on the
# corrupted data, persona and base on its control data (`analysis.interaction`).
RUNS = {PERSONA: "em_persona", BASE: "em_base", CONTROL: "em_control", BASE_CONTROL: "em_base_control"}
# The simple effects the headline keeps, by name: (reference run, its name against the persona run).
SIMPLE_EFFECTS = {
    BASE: "base_em_minus_persona_em",  # persona vs base, both on the corrupted data
    CONTROL: "persona_control_minus_persona_em",  # corrupted vs control data, both from the persona
}
BARE, SYSTEM = "persona_contrast_bare", "persona_contrast"  # the two reads of the contrast set
DEFAULT_PROBES = ("em_questions", "persona_questions")


def _acts(run: Path, checkpoint: str, probe: str) -> torch.Tensor:
    return em_store(run).load(f"{checkpoint}/{probe}").tensor.float()


def default_behaviour(run: Path, checkpoint: str) -> torch.Tensor:
    """`[n, L, d]`: the model's state as it starts answering prompts without a system prompt."""
    return torch.cat([_acts(run, checkpoint, probe) for probe in DEFAULT_PROBES])


def check_prompt_hashes(runs: Mapping[str, Path], probes: Sequence[str]) -> None:
    """Every checkpoint of every run must have read the same prompts for each probe set: a store
    made from another contrast set or question set is refused, naming both."""
    for probe in probes:
        seen: tuple[str, str] | None = None
        for run in runs.values():
            store = em_store(run)
            for c in checkpoints(run):
                name = f"{c}/{probe}"
                if name not in store:
                    continue
                h = store.prompt_hash(name)
                where = f"{run / 'activations'}:{name}"
                if seen is None:
                    seen = (h, where)
                elif h != seen[0]:
                    raise ValueError(
                        f"probe set '{probe}' read different prompts in {seen[1]} (hash {seen[0][:12]}) "
                        f"and {where} (hash {h[:12]}): these runs cannot be compared; rerun them on one probe set"
                    )


def bootstrap_band(values: torch.Tensor, n_boot: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile 95% band of the item mean of `values` `[n, L]`, per layer (each item is its own
    question here, so resampling items is the clustered bootstrap)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(len(values), (n_boot, len(values)), generator=g)
    means = values[index].mean(1)  # [B, L]
    return torch.quantile(means, 0.025, dim=0), torch.quantile(means, 0.975, dim=0)


@dataclass
class AnchorAxis:
    """The reference persona direction and the two ends of the anchor scale, read from a run."""

    contrast: torch.Tensor  # [n, L, d] contrast activations at the axis checkpoint
    v_r: torch.Tensor  # [L, d]
    base: torch.Tensor  # [n, L] base model's default behaviour projected on v_r (the 0)
    persona: torch.Tensor  # [n, L] persona model's, before EM (the 1)

    def anchor(self, acts: torch.Tensor) -> torch.Tensor:
        """`[n, L]` per-item anchor projections of default-behaviour activations."""
        return drift.rescale(drift.projections(acts, self.v_r), self.base.mean(0), self.persona.mean(0))


def anchor_axis(
    persona_run: Path, base_run: Path, labels: torch.Tensor, read: str = BARE, axis_run: Path | None = None
) -> AnchorAxis:
    """v_r from step 0's contrast read (of the persona run, or of `axis_run`, e.g. the base run
    when several persona models must share one axis); its 0 and 1 from step 0 of the base and
    persona runs."""
    source = axis_run or persona_run
    contrast = _acts(source, checkpoints(source)[0], read)
    v_r = drift.persona_direction(contrast, labels)
    return AnchorAxis(
        contrast,
        v_r,
        drift.projections(default_behaviour(base_run, checkpoints(base_run)[0]), v_r),
        drift.projections(default_behaviour(persona_run, checkpoints(persona_run)[0]), v_r),
    )


# The run's one layer rule: every number an experiment reports "at the run's layer" (the drift
# table, the contrast pairs' probe accuracy, steering's default layer) is at the layer it chooses.
LAYER_RULE = "held-out separation"


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of n prompts (each its own question): one chooses the layer, the other
    carries every number reported at it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2].sort().values, order[n // 2 :].sort().values


def question_split(questions: Sequence[str], labels: torch.Tensor, test_fraction: float, seed: int):
    """Train/test row indices split by question, each side holding both labels."""
    for attempt in range(20):
        split = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed + attempt)
        train, test = next(split.split(labels.numpy(), labels.numpy(), groups=list(questions)))
        if len(set(labels[train].tolist())) == 2 and len(set(labels[test].tolist())) == 2:
            return torch.tensor(train), torch.tensor(test)
    raise ValueError(
        f"no question-level split of {len(set(questions))} questions has both labels on both sides"
    )


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1))


def compute_drift(
    runs: Mapping[str, Path],
    labels: torch.Tensor,
    pairs: Sequence[object],
    questions: Sequence[str] | None = None,
    subspace_k: int = 3,
    misalignment: torch.Tensor | None = None,
    judged_misalignment: torch.Tensor | None = None,
    n_boot: int = 1000,
    n_null: int = 200,
    n_null_fits: int = 100,
    test_fraction: float = 0.25,
    axis_run: str = PERSONA,
    seed: int = 0,
) -> dict:
    """All drift metrics, per run, checkpoint and layer, as JSON-ready lists, with the headline
    numbers' clustered-bootstrap intervals and each drift figure's null percentile.

    `runs` maps "persona", "base" and optionally "control" to EM run directories; `labels`,
    `pairs` and `questions` describe the contrast items (1 = elicited; a pair key groups an
    elicited/suppressed pair; questions are the clusters of the held-out split and of the label
    shuffles, default: the pair keys); `misalignment` is the judge-free `[L, d]` misalignment
    direction, `judged_misalignment` the one from judged answers (either may be None);
    `axis_run` names the run whose step 0 defines the persona axis."""
    questions = list(questions) if questions is not None else [str(p) for p in pairs]
    reference = runs[PERSONA]
    check_prompt_hashes(runs, (BARE, SYSTEM, *DEFAULT_PROBES, "neutral"))
    r = checkpoints(reference)[0]
    axis = anchor_axis(reference, runs[BASE], labels, BARE, runs[axis_run])
    v_r = axis.v_r
    v_r_system = drift.persona_direction(
        _acts(runs[axis_run], checkpoints(runs[axis_run])[0], SYSTEM), labels
    )
    n_layers = int(v_r.shape[0])

    # Layer choice on one half of the default-behaviour prompts, every anchor number on the other.
    select, report = split_halves(axis.base.shape[0], seed)

    def separation(rows: torch.Tensor) -> torch.Tensor:
        base, persona = axis.base[rows], axis.persona[rows]
        spread = torch.sqrt((base.var(0) + persona.var(0)) / 2).clamp_min(1e-6)
        return (persona.mean(0) - base.mean(0)) / spread

    best = int(separation(select).argmax())
    base_mean, persona_mean = axis.base[report].mean(0), axis.persona[report].mean(0)

    # Probes: fitted at r on train questions, scored on held-out questions everywhere.
    train, test = question_split(questions, labels, test_fraction, seed)
    contrast_r = {read: _acts(reference, r, read) for read in (BARE, SYSTEM)}
    probes = {
        read: drift.fit_reference_probe(contrast_r[read][train], labels[train]) for read in (BARE, SYSTEM)
    }
    in_sample = drift.probe_transfer(*probes[BARE], contrast_r[BARE][train], labels[train])
    k = min(subspace_k, len(set(pairs)) - 1)
    q_r = drift.contrast_subspace(axis.contrast, labels, pairs, k) if k >= 1 else None

    out: dict = {
        "reference": {"run": PERSONA, "checkpoint": r, "axis_run": axis_run},
        "n_layers": n_layers,
        "best_layer": best,
        "layer_selection": {
            "name": LAYER_RULE,
            "rule": "largest persona-minus-base separation of default behaviour along v_r (in item "
            "spreads), on a held-out half of the prompts; all anchor numbers use the other half",
            "selection_prompts": select.tolist(),
            "report_prompts": report.tolist(),
            "separation_selection": separation(select).tolist(),
            "separation_report": separation(report).tolist(),
        },
        "separation": separation(report).tolist(),
        "probe": {
            "split": "by question",
            "train_questions": len({questions[i] for i in train.tolist()}),
            "test_questions": len({questions[i] for i in test.tolist()}),
            "in_sample_accuracy_at_r": in_sample.tolist(),
            "held_out_accuracy_at_r": drift.probe_transfer(
                *probes[BARE], contrast_r[BARE][test], labels[test]
            ).tolist(),
        },
        "runs": {},
    }
    if misalignment is not None and judged_misalignment is not None:
        out["misalignment_directions_cosine"] = drift.cosine(misalignment, judged_misalignment).tolist()

    unit = lambda v: F.normalize(v.double(), dim=-1)  # noqa: E731
    per_item: dict[str, torch.Tensor] = {}  # run -> [T, m] report-half projections on v_r at the best layer
    shifts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # run -> em_questions at start and end
    for name, run in runs.items():
        ckpts = checkpoints(run)
        start_questions = _acts(run, ckpts[0], "em_questions")
        start_behaviour = default_behaviour(run, ckpts[0])[report]
        start_neutral = _acts(run, ckpts[0], "neutral")
        series: dict[str, list] = {key: [] for key in SERIES}
        items, projected_by_checkpoint = [], []
        for c in ckpts:
            contrast = {
                read: _acts(run, c, read) for read in (BARE, SYSTEM) if f"{c}/{read}" in em_store(run)
            }
            v_t = drift.persona_direction(contrast[BARE], labels)
            behaviour = default_behaviour(run, c)
            projected = drift.projections(behaviour[report], v_r)
            scaled = drift.rescale(projected, base_mean, persona_mean)
            items.append(projected[:, best])
            projected_by_checkpoint.append(projected)
            low, high = bootstrap_band(scaled, n_boot, seed)
            questions_t = _acts(run, c, "em_questions")
            shift = drift.em_shift(questions_t, start_questions)
            series["direction_stability"].append(drift.direction_stability(v_t, v_r).tolist())
            # the with-system read is taken at the first and last checkpoint only: None between
            with_system = contrast.get(SYSTEM)
            series["direction_stability_with_system"].append(
                drift.direction_stability(drift.persona_direction(with_system, labels), v_r_system).tolist()
                if with_system is not None
                else None
            )
            series["anchor_projection"].append(scaled.mean(0).tolist())
            series["anchor_low"].append(low.tolist())
            series["anchor_high"].append(high.tolist())
            series["probe_transfer"].append(
                drift.probe_transfer(*probes[BARE], contrast[BARE][test], labels[test]).tolist()
            )
            series["probe_transfer_with_system"].append(
                drift.probe_transfer(*probes[SYSTEM], with_system[test], labels[test]).tolist()
                if with_system is not None
                else None
            )
            series["subspace_overlap"].append(
                drift.subspace_overlap(
                    drift.contrast_subspace(contrast[BARE], labels, pairs, k), q_r
                ).tolist()
                if q_r is not None
                else None
            )
            series["em_shift_norm"].append(shift.norm(dim=-1).tolist())
            # undefined (NaN -> null) where nothing moved yet, at step 0: missing, never 0
            series["em_shift_cos_persona"].append(_listed(drift.cosine(shift, v_r)))
            for key, direction in (
                ("em_shift_cos_misalignment", misalignment),
                ("em_shift_cos_judged_misalignment", judged_misalignment),
            ):
                series[key].append(_listed(drift.cosine(shift, direction)) if direction is not None else None)
            if misalignment is not None:  # per layer: default behaviour's change along m, in item spreads
                along = drift.projections(behaviour[report], misalignment)
                along_0 = drift.projections(start_behaviour, misalignment)
                series["misalignment_movement"].append(
                    _listed((along.mean(0) - along_0.mean(0)) / drift.spread_unit(along_0.std(0)))
                )
            else:
                series["misalignment_movement"].append(None)
            neutral = _acts(run, c, "neutral")
            series["cka_to_start"].append(drift.linear_cka(neutral, start_neutral).tolist())
            # its null: the same reads with the rows' correspondence broken (with few rows in many
            # dimensions, unrelated activations already reach a high CKA)
            series["cka_null_shuffled_rows"].append(_cka_null(neutral, start_neutral, seed).tolist())
        steps = [step_of(c) for c in ckpts]
        per_item[name] = torch.stack(items)
        shifts[name] = (start_questions[:, best], _acts(run, ckpts[-1], "em_questions")[:, best])
        anchor_by_layer = torch.tensor(series["anchor_projection"])  # [T, L]
        out["runs"][name] = {
            "run_dir": str(run),
            "checkpoints": ckpts,
            "steps": steps,
            **series,
            "drift_auc": _listed(torch.tensor(drift.drift_auc(anchor_by_layer[:, best].tolist(), steps))),
            "drift_auc_signed": _listed(
                torch.tensor(drift.drift_auc(anchor_by_layer[:, best].tolist(), steps, signed=True))
            ),
            "drift_auc_by_layer": _listed(drift.drift_auc_batch(anchor_by_layer.T, steps)),
            # the same in units of the items' spread, which stays finite where the persona gap is ~0
            "drift_auc_spread_by_layer": _listed(
                drift.drift_auc_batch(drift.standardised_change(torch.stack(projected_by_checkpoint)), steps)
            ),
        }

    out["headline"] = _headline(out, per_item, shifts, unit(v_r[best]), misalignment, best, n_boot, seed)
    out["simple_effects"] = {
        key: value["value"] for key, value in out["headline"]["simple_effects"].items() if value is not None
    }
    if all(name in runs for name in RUNS):  # the 2x2: the interaction along each direction
        reads = {
            name: tuple(
                default_behaviour(run, c)[report] for c in (checkpoints(run)[0], checkpoints(run)[-1])
            )
            for name, run in runs.items()
        }
        out["interaction"] = {"persona": interaction(reads, v_r, best, n_boot, seed)}
        if misalignment is not None:
            out["interaction"]["misalignment"] = interaction(reads, misalignment, best, n_boot, seed)
    out["nulls"] = _nulls(
        runs, out, labels, questions, pairs, k, train, test, axis, per_item, shifts, misalignment,
        best, n_null, n_null_fits, seed,
    )  # fmt: skip
    # The ratio form of a simple effect, beside the headline difference, only where its
    # denominator is a drift: the reference moved (signed interval excludes 0) beyond its null.
    out["simple_effect_ratios"] = out["headline"].pop("simple_effect_ratios")
    reference_of = {key: ref for ref, key in SIMPLE_EFFECTS.items()}
    for key, ratio in out["simple_effect_ratios"].items():
        ref = reference_of[key]
        reference_null = out["nulls"].get(ref, {}).get("drift_auc_vs_matched_directions")
        if (
            ratio is not None
            and ratio.get("value") is not None
            and not (reference_null or {}).get("exceeds_95")
        ):
            out["simple_effect_ratios"][key] = unmeasured(
                ratio.get("n"),
                f"the {ref} run's drift along the persona direction is not above the 95th percentile of "
                "its random-direction null, so a ratio to it would divide by noise",
            )
    return out


SERIES = (
    "direction_stability",
    "direction_stability_with_system",
    "anchor_projection",
    "anchor_low",
    "anchor_high",
    "probe_transfer",
    "probe_transfer_with_system",
    "subspace_overlap",
    "em_shift_norm",
    "em_shift_cos_persona",
    "em_shift_cos_misalignment",
    "em_shift_cos_judged_misalignment",
    "misalignment_movement",
    "cka_to_start",
    "cka_null_shuffled_rows",
)


def _cka_null(x: torch.Tensor, y: torch.Tensor, seed: int, n: int = 20) -> torch.Tensor:
    """`[L]`: the mean linear CKA of `x` with `y` over `n` shufflings of `x`'s rows (a shuffle
    permutes the rows and columns of `x`'s Gram matrix, so each costs no new product)."""
    g = torch.Generator().manual_seed(seed)
    gram_x, gram_y = drift.centred_gram(x), drift.centred_gram(y)
    shuffled = []
    for _ in range(n):
        order = torch.randperm(len(x), generator=g)
        shuffled.append(drift.cka_of_grams(gram_x[:, order][:, :, order], gram_y))
    return torch.stack(shuffled).mean(0)


def _listed(values: torch.Tensor) -> object:
    """A tensor as JSON: NaN (undefined) becomes null, so a missing value is never read as a number."""
    if values.ndim == 0:
        return None if values.isnan() else float(values)
    return [_listed(v) for v in values]


def _interval(boots: torch.Tensor) -> list[float]:
    boots = boots[~boots.isnan()]
    if len(boots) == 0:
        return [float("nan")] * 2
    return torch.quantile(boots.double(), torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()


def _number(value: float, boots: torch.Tensor, n: int) -> dict:
    return estimate(value, _interval(boots), 1, clusters=n, interval="bootstrap over questions (one seed)")


def _headline(
    out: dict,
    per_item: Mapping[str, torch.Tensor],
    shifts: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    v_unit: torch.Tensor,
    misalignment: torch.Tensor | None,
    best: int,
    n_boot: int,
    seed: int,
) -> dict:
    """One seed's headline numbers at the chosen layer, each `{"value", "ci95", "n"}`; the
    interval resamples prompts (each its own question) jointly across runs, since every run read
    the same prompts, so differences between runs keep their pairing."""
    m = per_item[PERSONA].shape[1]
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(m, (n_boot, m), generator=g)
    base_0, persona_0 = per_item[BASE][0], per_item[PERSONA][0]

    def anchored(name: str, rows: torch.Tensor | None) -> torch.Tensor:
        """Rescaled mean anchor projections: `[T]` on all prompts, or `[B, T]` on resamples."""
        take = (lambda x: x) if rows is None else (lambda x: x[..., rows])
        b, p = take(base_0).double().mean(-1), take(persona_0).double().mean(-1)
        means = take(per_item[name]).double().mean(-1)  # [T] or [T, B]
        scaled = (means - b) / (p - b)
        return scaled if rows is None else scaled.T

    real = {name: anchored(name, None) for name in per_item}
    boot = {name: anchored(name, index) for name in per_item}  # [B, T]
    steps = {name: out["runs"][name]["steps"] for name in per_item}
    head: dict = {"anchor_after": {}, "drift_auc_abs": {}, "drift_auc_signed": {}}
    for name in per_item:
        head["anchor_after"][name] = _number(real[name][-1], boot[name][:, -1], m)
        for key, signed in (("drift_auc_abs", False), ("drift_auc_signed", True)):
            value = drift.drift_auc_batch(real[name][None], steps[name], signed)[0]
            head[key][name] = _number(value, drift.drift_auc_batch(boot[name], steps[name], signed), m)
    head["simple_effects"], head["simple_effect_ratios"] = {}, {}
    auc = lambda name, x: drift.drift_auc_batch(x, steps[name])  # noqa: E731
    for ref, key in SIMPLE_EFFECTS.items():
        if ref not in per_item:
            head["simple_effects"][key] = head["simple_effect_ratios"][key] = None
            continue
        value = auc(ref, real[ref][None])[0] - auc(PERSONA, real[PERSONA][None])[0]
        diff = auc(ref, boot[ref]) - auc(PERSONA, boot[PERSONA])
        head["simple_effects"][key] = {
            **_number(value, diff, m),
            "definition": f"drift AUC along the persona direction of the {ref} run minus the persona + EM "
            "run's (> 0: the persona + EM run moved less); a simple effect, not the interaction",
        }
        low, high = bounds(head["drift_auc_signed"][ref])
        moved = (low is not None and low > 0) or (
            high is not None and high < 0
        )  # the reference clearly moved: the ratio has a denominator
        ratio = 1 - auc(PERSONA, real[PERSONA][None])[0] / auc(ref, real[ref][None])[0]
        head["simple_effect_ratios"][key] = (
            _number(ratio, 1 - auc(PERSONA, boot[PERSONA]) / auc(ref, boot[ref]), m)
            if moved
            else unmeasured(1, f"the {ref} run's signed drift interval includes 0")
        )
    for key, direction in (("em_shift_cos_persona", v_unit), ("em_shift_cos_misalignment", misalignment)):
        if direction is None:
            head[key] = None
            continue
        d = direction if direction.ndim == 1 else direction[best]
        head[key] = {}
        for name, (start, end) in shifts.items():
            q = start.shape[0]
            rows = torch.randint(q, (n_boot, q), generator=g)
            value = _cos(end.double().mean(0) - start.double().mean(0), d)
            boots = F.cosine_similarity(
                end.double()[rows].mean(1) - start.double()[rows].mean(1), d.double()[None], dim=-1
            )
            head[key][name] = _number(value, boots, q)
    return head


def null_directions(
    axis: AnchorAxis, reference: Path, layer: int, directions: Mapping[str, torch.Tensor], n: int, seed: int
) -> dict[str, torch.Tensor]:
    """Per named direction, `[n, d]` random unit directions at `layer` whose spread in the
    reference's activations (its contrast reads and default behaviour pooled, read once) matches
    that direction's: the null a standardised figure along it is placed in. Directions drawn from
    N(0, Sigma) would concentrate on high-variance components, where a standardised change is small,
    so any direction of ordinary spread would beat them (`drift.variance_matched_directions`)."""
    pool = torch.cat(
        [axis.contrast[:, layer], default_behaviour(reference, checkpoints(reference)[0])[:, layer]]
    )
    return {name: drift.variance_matched_directions(pool, d, n, seed) for name, d in directions.items()}


def _nulls(
    runs: Mapping[str, Path],
    out: dict,
    labels: torch.Tensor,
    questions: Sequence[str],
    pairs: Sequence[object],
    k: int,
    train: torch.Tensor,
    test: torch.Tensor,
    axis: AnchorAxis,
    per_item: Mapping[str, torch.Tensor],
    shifts: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    misalignment: torch.Tensor | None,
    best: int,
    n_null: int,
    n_null_fits: int,
    seed: int,
) -> dict:
    """Each drift figure at the chosen layer and the end of EM, placed in its random null: the same
    figure on `n_null` random directions matched in spread to the figure's own direction (for
    projections and cosines), or on `n_null_fits` refits with the labels shuffled within each
    question (for fitted figures). The scientific null, the same figure in the control run of the
    same start, is read beside these by `headline.null_rows`."""
    reference = runs[PERSONA]
    report = torch.tensor(out["layer_selection"]["report_prompts"])
    v_unit = F.normalize(axis.v_r[best].double(), dim=0).float()
    m_unit = F.normalize(misalignment[best].double(), dim=0).float() if misalignment is not None else None
    units = {"persona": v_unit, **({"misalignment": m_unit} if m_unit is not None else {})}
    matched = null_directions(axis, reference, best, units, n_null, seed)  # each [N, d]
    u, u_m = matched["persona"], matched.get("misalignment")
    contrast_r = axis.contrast[:, best]
    g = torch.Generator().manual_seed(seed + 1)
    shuffles = [drift.shuffle_within(labels, questions, g) for _ in range(n_null_fits)]
    v_r_null = [drift.persona_direction(contrast_r, s) for s in shuffles]
    result = {}
    for name, run in runs.items():
        ckpts = checkpoints(run)
        steps = out["runs"][name]["steps"]
        behaviour = torch.stack([default_behaviour(run, c)[report][:, best] for c in ckpts])  # [T, m, d]
        real_change = drift.standardised_change(behaviour @ v_unit[:, None])[0]  # [T]
        null_change = drift.standardised_change(behaviour @ u.T)  # [N, T]
        start, end = shifts[name]
        shift = end.double().mean(0) - start.double().mean(0)
        null_cos = F.cosine_similarity(shift[None], u.double(), dim=-1)
        figures = {
            "drift_auc_vs_matched_directions": null_percentile(
                float(drift.drift_auc_batch(real_change[None], steps)[0]),
                drift.drift_auc_batch(null_change, steps),
                "greater",
            ),
            "anchor_change_vs_matched_directions": null_percentile(
                float(real_change[-1]), null_change[:, -1], "two-sided"
            ),
            "em_shift_cos_persona_vs_matched_directions": null_percentile(
                _cos(shift, v_unit), null_cos, "two-sided"
            ),
        }
        if m_unit is not None:
            figures["em_shift_cos_misalignment_vs_matched_directions"] = null_percentile(
                _cos(shift, m_unit), F.cosine_similarity(shift[None], u_m.double(), dim=-1), "greater"
            )
            figures["misalignment_movement_vs_matched_directions"] = null_percentile(
                float(drift.standardised_change(behaviour @ m_unit[:, None])[0, -1]),
                drift.standardised_change(behaviour @ u_m.T)[:, -1],
                "greater",
            )
        # Fitted figures: refits on shuffled labels, the same shuffle at r and at the end of EM.
        contrast_end = _acts(run, ckpts[-1], BARE)[:, best]
        v_end = drift.persona_direction(contrast_end, labels)
        null_stability = [
            _cos(drift.persona_direction(contrast_end, s), v0) for s, v0 in zip(shuffles, v_r_null)
        ]
        # as rotation, 1 - stability, so its size reads directly (stabilities all print as 1.000)
        figures["direction_rotation_vs_shuffled_labels"] = null_percentile(
            1 - _cos(v_end, axis.v_r[best]), [1 - x for x in null_stability], "greater"
        )
        w, b = drift.fit_reference_probe(contrast_r[train][:, None], labels[train])
        null_transfer = []
        for s in shuffles:
            w_s, b_s = drift.fit_reference_probe(contrast_r[train][:, None], s[train])
            null_transfer.append(
                float(drift.probe_transfer(w_s, b_s, contrast_end[test][:, None], s[test])[0])
            )
        figures["probe_transfer_vs_shuffled_labels"] = null_percentile(
            float(drift.probe_transfer(w, b, contrast_end[test][:, None], labels[test])[0]),
            null_transfer,
            "greater",
        )
        if k >= 1:
            overlap = lambda x, y, lab: float(  # noqa: E731
                drift.subspace_overlap(
                    drift.contrast_subspace(x[:, None], lab, pairs, k),
                    drift.contrast_subspace(y[:, None], lab, pairs, k),
                )[0]
            )
            figures["subspace_loss_vs_shuffled_labels"] = null_percentile(
                1 - overlap(contrast_end, contrast_r, labels),
                [1 - overlap(contrast_end, contrast_r, s) for s in shuffles],
                "greater",
            )
        result[name] = figures
    return result
