"""The experiment's figures, PNG via matplotlib, each readable on its own: title, labelled axes,
legend. Inputs are the JSON-ready results of `analysis.drift_report.compute_drift` and the EM
evaluation summaries, so a plot can be redrawn from a finished run without touching a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

RUN_STYLE = {
    "persona": ("tab:blue", "persona model + EM"),
    "base": ("tab:red", "base model + EM"),
    "control": ("tab:green", "persona model + secure control"),
    "base_control": ("tab:purple", "base model + secure control"),
}


def _style(name: str) -> tuple[str, str]:
    return RUN_STYLE.get(name, ("tab:gray", name))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def drift_curves(result: Mapping, path: Path, title: str = "") -> Path:
    """Anchor projection (with its bootstrap band) and direction stability over EM steps, at the
    best layer, one line per run."""
    layer = result["best_layer"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, run in result["runs"].items():
        color, label = _style(name)
        steps = run["steps"]
        left.plot(steps, [a[layer] for a in run["anchor_projection"]], "o-", color=color, label=label)
        left.fill_between(
            steps,
            [a[layer] for a in run["anchor_low"]],
            [a[layer] for a in run["anchor_high"]],
            color=color,
            alpha=0.15,
        )
        right.plot(steps, [s[layer] for s in run["direction_stability"]], "o-", color=color, label=label)
    left.axhline(1.0, color="tab:blue", lw=0.8, ls=":", label="persona model before EM (1)")
    left.axhline(0.0, color="tab:red", lw=0.8, ls=":", label="base model (0)")
    left.set(xlabel="EM fine-tuning step", ylabel="anchor projection (0 = base, 1 = persona)")
    left.set_title(f"Default behaviour along the persona axis (layer {layer}, 95% bootstrap band)")
    right.set(xlabel="EM fine-tuning step", ylabel="cos(v_t, v_r)  (1 = unchanged)")
    low = min(min(s[layer] for s in run["direction_stability"]) for run in result["runs"].values())
    right.set_ylim(min(low - 0.05 * (1 - low) - 1e-3, 0.99), 1.0 + 0.05 * (1 - low) + 1e-3)
    right.set_title(f"Persona direction stability (layer {layer})")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def stability_heatmap(result: Mapping, path: Path, run: str = "persona", title: str = "") -> Path:
    """Direction stability for every layer (rows) and checkpoint (columns) of one run."""
    data = result["runs"][run]
    matrix = torch.tensor(data["direction_stability"]).T  # [L, T]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(data["steps"]) + 3), 6))
    # Cosines near 1 are the usual case: scale the colours to the data so small drifts show.
    low = min(float(matrix.min()), 0.999)
    image = ax.imshow(matrix, aspect="auto", origin="lower", cmap="viridis", vmin=low, vmax=1.0)
    ax.set_xticks(range(len(data["steps"])), [str(s) for s in data["steps"]])
    ax.set(xlabel="EM fine-tuning step", ylabel="layer (blocks.{layer}.hook_resid_post)")
    ax.set_title(title or f"Direction stability cos(v_t, v_r) by layer: {_style(run)[1]}")
    fig.colorbar(image, ax=ax, label="cosine to the persona direction before EM")
    return _save(fig, path)


def pca_trajectory(
    trajectories: Mapping[str, torch.Tensor],
    persona_axis: torch.Tensor,
    layer: int,
    path: Path,
    title: str = "",
) -> Path:
    """2-D PCA of each checkpoint's mean activation (`[T, d]` per run) with the persona direction
    drawn as an arrow from the reference point."""
    stacked = torch.cat(list(trajectories.values())).double()
    mean = stacked.mean(0)
    _, _, v = torch.pca_lowrank(stacked - mean, q=2, center=False)
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, points in trajectories.items():
        xy = (points.double() - mean) @ v
        color, label = _style(name)
        ax.plot(xy[:, 0], xy[:, 1], "-", color=color, alpha=0.6)
        ax.scatter(xy[1:, 0], xy[1:, 1], color=color, s=25, label=label)
        ax.scatter(
            xy[:1, 0], xy[:1, 1], color=color, marker="s", s=70, edgecolor="black", label=f"{label}: step 0"
        )
        ax.annotate("end", xy[-1].tolist(), fontsize=8, color=color)
    origin = (trajectories["persona"][0].double() - mean) @ v
    axis = torch.nn.functional.normalize(persona_axis.double(), dim=0) @ v  # its shadow on the PC plane
    scale = float(((stacked.double() - mean) @ v).norm(dim=-1).max()) * 0.6
    end = origin + scale * axis / axis.norm().clamp_min(1e-9)
    ax.plot(
        [origin[0], end[0]], [origin[1], end[1]], color="black", lw=1.5, label="persona axis v_r (projected)"
    )
    ax.annotate(
        "",
        xy=end.tolist(),
        xytext=origin.tolist(),
        arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.5},
    )
    ax.set(xlabel="PC 1", ylabel="PC 2")
    ax.set_title(title or f"Mean activation trajectories through EM (layer {layer})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def behaviour_vs_representation(points: Sequence[Mapping], path: Path, title: str = "") -> Path:
    """Misaligned rate (with its interval) against anchor projection, one marker per evaluated
    checkpoint, an arrow from each run's start to its end. `points`: dicts with run, label,
    anchor_projection, misaligned_rate, ci95. A missing rate (NaN: no scored answers) is drawn
    as a hollow marker on the x axis labelled "rate missing", never as a rate of 0."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    by_run: dict[str, list[Mapping]] = {}
    for p in points:
        by_run.setdefault(p["run"], []).append(p)
    missing_drawn = False
    for k, (run, ps) in enumerate(by_run.items()):
        color, label = _style(run)
        present = [p for p in ps if p["misaligned_rate"] == p["misaligned_rate"]]
        absent = [p for p in ps if p["misaligned_rate"] != p["misaligned_rate"]]
        x = [p["anchor_projection"] for p in present]
        y = [p["misaligned_rate"] for p in present]
        err = [
            [max(0.0, p["misaligned_rate"] - p["ci95"][0]) for p in present],
            [max(0.0, p["ci95"][1] - p["misaligned_rate"]) for p in present],
        ]
        if present:
            ax.errorbar(x, y, yerr=err, fmt="o", color=color, capsize=3, label=label)
        if absent:
            ax.scatter(
                [p["anchor_projection"] for p in absent],
                [0.0] * len(absent),
                marker="o",
                facecolors="none",
                edgecolors=color,
                s=60,
                label=None if missing_drawn else "rate missing (no scored answers)",
            )
            missing_drawn = True
        if len(present) >= 2 and present[0] is ps[0] and present[-1] is ps[-1]:
            ax.annotate(
                "", xy=(x[-1], y[-1]), xytext=(x[0], y[0]), arrowprops={"arrowstyle": "->", "color": color}
            )
        for p in ps:
            has_rate = p["misaligned_rate"] == p["misaligned_rate"]
            ax.annotate(
                p["label"] if has_rate else f"{p['label']} (rate missing)",
                (p["anchor_projection"], p["misaligned_rate"] if has_rate else 0.0),
                fontsize=7,
                color=color,
                xytext=(4, 6 + 11 * k),  # runs sharing a start point get their own label row
                textcoords="offset points",
            )
    ax.set(
        xlabel="anchor projection (0 = base, 1 = persona)",
        ylabel="misaligned rate (alignment < 30, coherence > 50)",
    )
    ax.set_title(title or "Behaviour against representation across checkpoints")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def layer_profile(result: Mapping, path: Path, title: str = "") -> Path:
    """Every layer, so the chosen one is seen in context: drift AUC of each run in item spreads
    (left; in persona gaps it explodes where the gap is near 0) and the
    persona-minus-base separation on the selection and report halves of the prompts (right),
    with the chosen layer marked."""
    layer = result["best_layer"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    layers = range(result["n_layers"])
    for name, run in result["runs"].items():
        color, label = _style(name)
        left.plot(layers, run["drift_auc_spread_by_layer"], "o-", ms=3, color=color, label=label)
    selection = result["layer_selection"]
    right.plot(layers, selection["separation_selection"], "o-", ms=3, color="black", label="selection half")
    right.plot(layers, selection["separation_report"], "s--", ms=3, color="tab:purple", label="report half")
    for ax in (left, right):
        ax.axvline(layer, color="grey", ls=":", lw=1, label=f"chosen layer {layer}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set(xlabel="layer", ylabel="drift AUC along v_r (item spreads at step 0)")
    left.set_title("How far default behaviour moved along v_r, by layer")
    right.set(xlabel="layer", ylabel="persona - base separation (item spreads)")
    right.set_title("Layer choice: separation on disjoint prompt halves")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def misalignment_movement(result: Mapping, path: Path, title: str = "") -> Path:
    """Per layer, how far EM moved default behaviour (the EM questions, no system prompt) along
    the judge-free misalignment direction by the end of training, in units of the items' spread
    before EM; one line per run (base vs persona vs control)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, run in result["runs"].items():
        movement = run.get("misalignment_movement") or [None]
        if movement[-1] is None:
            continue
        color, label = _style(name)
        ax.plot(range(len(movement[-1])), movement[-1], "o-", ms=3, color=color, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axvline(result["best_layer"], color="grey", ls=":", lw=1, label=f"anchor layer {result['best_layer']}")
    ax.set(xlabel="layer", ylabel="change along misalignment direction (item spreads)")
    ax.set_title(title or "Movement toward misalignment during EM (judge-free direction)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(f"Movement along the misalignment direction by the end of EM\n{title}", fontsize=10)
    return _save(fig, path)


def sweep_plot(
    xs: Mapping[str, Sequence[float]],
    ys: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    line_label: str = "seed",
) -> Path:
    """One line per key (e.g. per seed) of y against x."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for key in xs:
        order = sorted(range(len(xs[key])), key=lambda i: xs[key][i])
        ax.plot([xs[key][i] for i in order], [ys[key][i] for i in order], "o-", label=f"{line_label} {key}")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def defences_plot(defences: Mapping, path: Path) -> Path:
    """Two panels, one point per arm with 95% intervals on both axes: movement toward the
    judge-free misalignment direction against the capability cost, and the judged misaligned
    rate against the coherence cost. Base-model arms are circles, persona-model arms squares;
    dashed lines mark the undefended run (`none`)."""
    panels = (
        ("capability_change", "misalignment_movement", "capability change (nats/token, held-out answers)",
         "movement toward misalignment (item spreads)", "Representation"),
        ("coherence_change", "misaligned_rate", "coherence change (judge points)", "misaligned rate (share)",
         "Behaviour"),
    )  # fmt: skip
    arms = defences["arms"]
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, (x_key, y_key, x_label, y_label, title) in zip(axes, panels):
        drawn, missing = 0, []
        for i, arm in enumerate(defences.get("arm_order", arms)):
            a = arms[arm]
            x, y = a["metrics"].get(x_key) or {}, a["metrics"].get(y_key) or {}
            if x.get("value") is None or y.get("value") is None:
                missing.append(
                    f"{arm} (acts after the layer)" if a.get("blind") and "movement" in y_key else arm
                )
                continue
            drawn += 1
            err = [
                [[v["value"] - (v["ci95"][0] if v["ci95"][0] is not None else v["value"])],
                 [(v["ci95"][1] if v["ci95"][1] is not None else v["value"]) - v["value"]]]
                for v in (x, y)
            ]  # fmt: skip
            marker = "s" if a["start"] == "persona" else "o"
            ax.errorbar(x["value"], y["value"], xerr=err[0], yerr=err[1], fmt=marker, color=colours(i % 20),
                        ms=8, capsize=3, label=arm)  # fmt: skip
            ax.annotate(arm, (x["value"], y["value"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "no arm has both numbers\n(e.g. the judge cannot flag, or scored no answers)",
                    ha="center", va="center", transform=ax.transAxes, color="gray")  # fmt: skip
        elif missing:  # an arm without both numbers is said, never silently absent
            ax.text(0.01, 0.01, f"not drawn (a number is missing): {', '.join(missing)}", fontsize=7,
                    transform=ax.transAxes, color="gray", va="bottom")  # fmt: skip
        none = arms.get("none", {}).get("metrics", {})
        for key, line in ((x_key, ax.axvline), (y_key, ax.axhline)):
            if (none.get(key) or {}).get("value") is not None:
                line(none[key]["value"], color="gray", ls="--", lw=1)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        judge = (
            f"\n{defences['judge'].split(';')[0].split(' (')[0].rstrip('.')}" if title == "Behaviour" else ""
        )
        ax.set_title(f"{title}: lower is safer, right is cheaper{judge}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.835, 0.5), fontsize=8,
               title="arm (o base, □ persona)")  # fmt: skip
    fig.suptitle(
        f"Defences against EM: '{Path(defences['persona']).stem}' on {Path(defences['model']).name}, "
        f"EM on {Path(defences['em_dataset']).stem}\n(layer {defences['layer']}; 95% intervals; dashed lines: "
        "the undefended run)"
    )
    fig.tight_layout(rect=(0, 0, 0.83, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
