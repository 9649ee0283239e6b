"""The monitoring section of a run: per checkpoint, drift along the frozen step-0 directions
(persona, judge-free misalignment, and the assistant axis when read) with the representation
alarm, the LoRA B-vector phase-transition trace, behaviour where it was evaluated with the
behavioural alarm (their unmatched lead time is kept in the metrics only; the report's lead time is
the matched alarms', `analysis.matched_alarms`); one timeline PNG and a few sentences.

Everything is read at the drift analysis's chosen layer on its held-out report half of the
prompts, so monitoring is not done on the prompts that chose the layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.monitor import (  # noqa: E402
    behavioural_alarm,
    judge_kind_of,
    layer_series,
    lead_time,
    representation_alarm,
    run_series,
)
from analysis.phase import detect_run_transitions, found_words  # noqa: E402
from analysis.plots import _style  # noqa: E402

SIDES = {"persona": "two-sided", "misalignment": "greater", "assistant": "two-sided"}


def monitor_runs(
    runs: Mapping[str, Path],
    layer: int,
    report_rows: list[int],
    directions: Mapping[str, torch.Tensor],
    behaviour_by_step: Mapping[str, Mapping[int, Mapping]] | None = None,
    judge: str = "",
    seed: int = 0,
    null: torch.Tensor | None = None,
) -> dict:
    """Per run: representation alarms on `directions` (`{name: [L, d]}`, frozen at step 0),
    B-vector phase transitions, and, where `behaviour_by_step[run]` holds misaligned rates at
    evaluated steps, the behavioural alarm and the lead time. `null`: the random directions `[N, d]`
    the persona figures were placed in (`drift_report.null_directions`, matched to the persona
    direction's spread), so alarms and nulls agree."""
    rows = torch.tensor(report_rows)
    at_layer = {name: d[layer] for name, d in directions.items()}
    out: dict = {"layer": layer, "directions": list(at_layer), "runs": {}}
    for name, run in runs.items():
        steps, acts = layer_series(run, layer, rows)
        alarm = representation_alarm(
            acts,
            steps,
            at_layer,
            sides={k: SIDES.get(k, "two-sided") for k in at_layer},
            null=null,
            seed=seed,
            layer=layer,
        )
        entry = {"steps": steps, "representation": alarm, "transitions": detect_run_transitions(run)}
        rates = (behaviour_by_step or {}).get(name)
        if rates:
            entry["behaviour_rates"] = {int(s): dict(r) for s, r in rates.items()}
            try:
                entry["behaviour"] = behavioural_alarm(rates, judge_kind_of(judge))
                # unmatched: the two alarms differ in power and looks, so the report prints the
                # matched alarms' lead time instead (`analysis.matched_alarms`)
                entry["unmatched_lead_time"] = lead_time(alarm, entry["behaviour"])
            except ValueError as err:  # no scored answers at step 0: no reference to alarm against
                entry["unmatched_lead_time"] = {"lead_steps": None, "words": f"no lead time: {err}"}
        out["runs"][name] = entry
    return out


def detector_series(runs: Mapping[str, Path], seed: int, layer: int, report_rows: list[int], directions):
    """The drift detector's features for one seed's runs: EM on the corrupted data (persona and base)
    against the same fine-tuning on the control data (persona and base), so both classes start from
    both models in equal shares and the start cannot tell them apart."""
    rows = torch.tensor(report_rows)
    at_layer = {name: d[layer] for name, d in directions.items()}
    series = []
    for name, run in runs.items():
        steps, acts = layer_series(run, layer, rows)
        corrupted = name not in ("control", "base_control")
        series.append(run_series(f"{name}-s{seed}", seed, corrupted, steps, acts, at_layer))
    return series


def sentences(monitoring: Mapping) -> list[str]:
    """What the monitoring found, in words, one line per run."""
    lines = []
    for name, entry in monitoring["runs"].items():
        rep = entry["representation"]
        fired = [
            f"{d} at step {v['alarm_step']}"
            for d, v in rep["directions"].items()
            if v["alarm_step"] is not None
        ]
        line = (
            f"{name}: representation alarm (layer {monitoring['layer']}, beyond the random-direction null's 95th "
            f"percentile) {'fired: ' + ', '.join(fired) if fired else 'never fired'}; B-vector phase transition "
            f"{found_words(entry['transitions'])}"
        )
        # no lead time here: these two alarms differ in power and looks (the matched alarms give it)
        lines.append(line + ".")
    return lines


def timeline(monitoring: Mapping, path: Path, title: str = "") -> Path:
    """One figure per run column: drift along each frozen direction (standardised, with the null's
    95% point), the B-vector local cosine, and the misaligned rate where evaluated; alarms and
    transitions as vertical lines on the shared step axis."""
    names = list(monitoring["runs"])
    fig, axes = plt.subplots(3, len(names), figsize=(5.2 * len(names), 9.5), sharex="col", squeeze=False)
    styles = {"persona": "-", "misalignment": "--", "assistant": ":"}
    for col, name in enumerate(names):
        entry = monitoring["runs"][name]
        steps = entry["steps"]
        color, label = _style(name)
        top, mid, low = axes[0, col], axes[1, col], axes[2, col]
        for direction, data in entry["representation"]["directions"].items():
            top.plot(
                steps,
                data["standardised_change"],
                styles.get(direction, "-"),
                marker="o",
                ms=3,
                label=f"along {direction}",
            )
            if data["alarm_step"] is not None:
                top.axvline(data["alarm_step"], color="tab:red", lw=1, alpha=0.6)
        top.axhline(0, color="grey", lw=0.8)
        top.set_ylabel("shift since step 0 (item spreads)")
        top.set_title(f"{label}\nrepresentation (red lines: alarms)", fontsize=10)
        phase = entry["transitions"]
        for k in phase["windows"]:
            values = [float("nan") if v is None else v for v in phase["trace"][str(k)]]
            mid.plot(phase["steps"], values, marker="o", ms=3, label=f"k = {k} steps")
        for step in phase["transition_steps"] or []:
            mid.axvline(step, color="tab:red", lw=1.5)
        if phase["transition_steps"] is None:  # said on the panel, not left empty
            words = found_words(phase).replace(" (", "\n(")
            mid.text(0.5, 0.5, words, ha="center", va="center", transform=mid.transAxes, color="dimgrey")
        mid.set_ylim(-1.05, 1.05)
        mid.set_ylabel("LoRA B local cosine")
        mid.set_title("phase transitions (-1 straight, 0 right angle)", fontsize=10)
        behaviour = entry.get("behaviour")
        if behaviour:
            rates = entry["behaviour_rates"]
            points = [
                (s, r)
                for s, r in sorted(rates.items())
                if r["value"] is not None and r["value"] == r["value"]
            ]
            if points:
                xs = [int(s) for s, _ in points]
                ys = [r["value"] for _, r in points]
                err = [
                    [y - r["ci95"][0] for y, (_, r) in zip(ys, points)],
                    [r["ci95"][1] - y for y, (_, r) in zip(ys, points)],
                ]
                low.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    fmt="o-",
                    color=color,
                    capsize=3,
                    label=f"misaligned rate ({behaviour['alarm_name']} on it)",
                )
            if behaviour["alarm_step"] is not None:
                low.axvline(behaviour["alarm_step"], color="tab:red", lw=1)
            low.set_title("misaligned rate where evaluated (95% CI)", fontsize=10)
        else:
            why = (
                "no usable misaligned rate at step 0\n(no scored answers)"
                if "behaviour_rates" in entry
                else "behaviour not evaluated\nat intermediate checkpoints"
            )
            low.text(0.5, 0.5, why, ha="center", va="center", transform=low.transAxes, color="grey")
            low.set_title("misaligned rate", fontsize=10)
        low.set(xlabel="EM fine-tuning step", ylabel="misaligned rate")
        for ax in (top, mid, low):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title or f"Monitoring timeline (layer {monitoring['layer']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
