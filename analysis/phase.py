"""Phase transitions in an EM LoRA adapter, read off the trajectory of its B vectors.

Model Organisms for EM (Turner, Soligo et al. 2025) train a rank-1 LoRA on one layer's MLP
down-projection, save it every 5 steps, and find a *mechanistic phase transition*: the B vector moves
along a nearly straight line, then turns sharply onto a new direction, at the step where misaligned
behaviour appears. They measure the turn with the local cosine

    c_k(t) = cos(B(t-k) - B(t), B(t+k) - B(t))

for windows k in {5, 10, 15} steps: -1 on a straight path, 0 at a right-angle corner, +1 on a
U-turn. They drop steps where the path barely moves (max of |B(t)-B(t-k)| and |B(t+k)-B(t)| under
0.002), since the direction of a tiny displacement is noise. Their rule was checked against a public
copy of their phase-transition script; windows there must be multiples of the checkpoint spacing, and
they read the peak by eye (no numeric detection rule), so the rule below is this project's.

This module does the same on this project's EM runs (`<run>/adapters/em/step-XXXXX/`, standard PEFT
files), so the transition step can be drawn beside the persona drift curves:

* a rank-1 single-module adapter gets Model Organisms' measurement as they define it;
* any other adapter (rank r, many modules) gets *this project's extension*: each module's B matrix is
  flattened to one vector, its local cosine computed the same way, and the per-step median over
  modules reported. Flattening is sound along one training run: B and A are only ever moved by
  gradient steps, never re-parameterised, so the rank-r gauge freedom (B R, R^-1 A) does not act.
  A median says whether *most* modules turn together; a turn confined to a few modules is missed,
  and so is one where modules turn at steps a checkpoint or two apart (at a window of one spacing
  each module is still straight at the others' corners; five modules turning at 45/50/55 steps give
  a median of -1 at k=5 and -0.45 at k=15, none detected).

Model Organisms threshold the *larger* of the two displacements, so after a still phase the onset of
motion can register as a turn (the still side's direction is noise); such a transition sits at the
onset, and the trace shows the still phase as missing values.

Detection rule (this project's; Model Organisms give none): a step is a peak for window k when its
local cosine is above `cos_threshold` (default -0.5, i.e. the path turns by more than 60 degrees; a
clean right-angle corner scores 0, so a threshold of 0 would miss it), it is the largest finite value
within +-k steps, and it stands at least `prominence` above the smallest finite value within +-k
steps (so a random walk, whose local cosines all sit near 0 in high dimension, has no peaks). A
transition is a step that is a peak in a majority of the windows that have any finite value, a peak
in another window counting when it lies within one checkpoint spacing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from anchor.runs import CHECKPOINTS  # noqa: E402
from anchor.store import atomic_write_json  # noqa: E402

ADAPTER_FILE = "adapter_model.safetensors"
STEP_DIR = re.compile(r"^step-(\d+)$")
B_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_B(?:\.[^.]+)?\.weight$")
MO_THRESHOLD = 0.002
MO_METHOD = "Model Organisms local cosine of the LoRA B vector (rank-1, single module)"
EXTENSION_METHOD = (
    "this project's extension: local cosine of each module's flattened LoRA B, median over modules"
)


# ---------------------------------------------------------------- loading


def adapter_dirs(run_dir: str | Path, stage: str = "em") -> list[tuple[int, Path]]:
    """`(step, dir)` of every saved adapter, in step order. Accepts the EM run directory
    (`<run>/<stage>/checkpoints/step-XXXXX`) or the folder of step directories itself, so the same call
    works on a run and on an adapters folder copied out of one."""
    root = Path(run_dir)
    nested = root / stage / CHECKPOINTS
    base = nested if nested.is_dir() else root
    found = []
    for child in base.iterdir() if base.is_dir() else []:
        match = STEP_DIR.match(child.name)
        if match and (child / ADAPTER_FILE).is_file():
            found.append((int(match.group(1)), child))
    if not found:
        raise FileNotFoundError(f"no step-XXXXX/{ADAPTER_FILE} under {base}")
    return sorted(found)


def b_keys(adapter_file: Path) -> dict[str, str]:
    """Module name -> safetensors key of its lora_B weight (e.g. `model.layers.12.mlp.down_proj`)."""
    with safe_open(str(adapter_file), framework="pt") as f:
        keys = list(f.keys())
    out = {}
    for key in keys:
        match = B_KEY.match(key)
        if match:
            out[match.group("module")] = key
    return out


def list_modules(run_dir: str | Path, stage: str = "em") -> list[str]:
    """The adapted modules of a run, read from its first checkpoint (names only, no tensors)."""
    return sorted(b_keys(adapter_dirs(run_dir, stage)[0][1] / ADAPTER_FILE))


def _squeeze_rank1(b: torch.Tensor) -> torch.Tensor:
    """A rank-1 B ([out, 1]) is a vector; higher ranks keep their [out, r] shape."""
    return b[:, 0] if b.ndim == 2 and b.shape[1] == 1 else b


def load_b_vectors(
    run_dir: str | Path, modules: Sequence[str] | None = None, stage: str = "em"
) -> tuple[list[int], dict[str, torch.Tensor]]:
    """`(steps, {module: [T, ...] float32})`: every recorded adapter's lora_B per module, in step
    order (rank-1 B as [T, out], rank r as [T, out, r]). `modules` restricts the read, so a large
    multi-module adapter can be analysed one module at a time without holding every B of every
    checkpoint. Fails when checkpoints disagree on a module's presence or shape: a trajectory that
    silently mixes adapters would show a fake turn."""
    dirs = adapter_dirs(run_dir, stage)
    steps = [step for step, _ in dirs]
    wanted = list(modules) if modules is not None else None
    rows: dict[str, list[torch.Tensor]] = {}
    for step, path in dirs:
        keys = b_keys(path / ADAPTER_FILE)
        names = wanted if wanted is not None else sorted(keys)
        missing = [m for m in names if m not in keys]
        if missing or (wanted is None and rows and set(keys) != set(rows)):
            raise ValueError(f"step {step}: module set differs from the other checkpoints ({missing[:3]})")
        with safe_open(str(path / ADAPTER_FILE), framework="pt") as f:
            for name in names:
                rows.setdefault(name, []).append(_squeeze_rank1(f.get_tensor(keys[name]).float()))
    return steps, {name: _stack(name, vals) for name, vals in rows.items()}


def _stack(name: str, values: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1:
        raise ValueError(f"{name}: lora_B shape changes across checkpoints: {sorted(shapes)}")
    return torch.stack(values)


# ---------------------------------------------------------------- local cosine


def checkpoint_spacing(steps: Sequence[int]) -> int:
    """The most common gap between recorded steps. Runs record every N steps plus the final step,
    which may be off the grid, so the mode (not the minimum) is the spacing."""
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False) if b > a]
    if not gaps:
        raise ValueError("need at least two distinct recorded steps")
    return max(set(gaps), key=lambda g: (gaps.count(g), -g))


def default_windows(steps: Sequence[int]) -> list[int]:
    """1, 2 and 3 checkpoint spacings: Model Organisms' (5, 10, 15) steps when checkpoints are every
    5 steps (the rank1 preset), and the same shape of analysis at any other spacing."""
    spacing = checkpoint_spacing(steps)
    return [spacing, 2 * spacing, 3 * spacing]


def local_cosine(
    traj: torch.Tensor, steps: Sequence[int], k_steps: int, threshold: float = MO_THRESHOLD
) -> torch.Tensor:
    """[T] local cosine cos(B(t-k) - B(t), B(t+k) - B(t)) of a [T, D] trajectory (trailing dims are
    flattened), the window `k_steps` in training steps.

    The partners are looked up by step value, not by index: a checkpoint t gets a value only when
    checkpoints exist at exactly t-k and t+k. So a window that is not a multiple of the spacing finds
    no partners on a regular grid and its trace is all NaN (rounding it to the grid would silently
    measure another window), and irregular grids (the off-grid final step) are handled exactly.
    NaN also where the movement max(|B(t)-B(t-k)|, |B(t+k)-B(t)|) is below `threshold` (Model
    Organisms' 0.002 rule), and where one side did not move at all (their code writes 0 there; a
    cosine with a zero vector is undefined, and 0 would read as a right-angle turn)."""
    if k_steps <= 0:
        raise ValueError(f"window must be a positive number of steps, got {k_steps}")
    flat = traj.reshape(traj.shape[0], -1).double()
    if flat.shape[0] != len(steps):
        raise ValueError(f"trajectory has {flat.shape[0]} checkpoints but {len(steps)} steps")
    index = {step: i for i, step in enumerate(steps)}
    out = torch.full((len(steps),), float("nan"), dtype=torch.float64)
    for i, step in enumerate(steps):
        before, after = index.get(step - k_steps), index.get(step + k_steps)
        if before is not None and after is not None:
            out[i] = _cosine_or_nan(flat[before] - flat[i], flat[after] - flat[i], threshold)
    return out


def _cosine_or_nan(back: torch.Tensor, ahead: torch.Tensor, threshold: float) -> float:
    n_back, n_ahead = float(back.norm()), float(ahead.norm())
    if max(n_back, n_ahead) < threshold or n_back == 0.0 or n_ahead == 0.0:
        return float("nan")
    return max(-1.0, min(1.0, float(back @ ahead) / (n_back * n_ahead)))


def median_over_modules(traces: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-step median of the finite module traces; NaN where no module has a value (all below the
    movement threshold or outside the window)."""
    stacked = torch.stack(list(traces))
    return torch.nanmedian(stacked, dim=0).values


# ---------------------------------------------------------------- detection


def window_peaks(
    trace: Sequence[float],
    steps: Sequence[int],
    k_steps: int,
    cos_threshold: float = -0.5,
    prominence: float = 0.3,
) -> list[int]:
    """Steps where one window's trace peaks (rule in the module docstring): above `cos_threshold`,
    the maximum of the finite values within +-k steps (the first of a tie), and `prominence` above
    their minimum."""
    finite = [(s, float(v)) for s, v in zip(steps, trace, strict=True) if math.isfinite(float(v))]
    peaks = []
    for step, value in finite:
        near = [(s, v) for s, v in finite if abs(s - step) <= k_steps]
        top = max(v for _, v in near)
        first_top = min(s for s, v in near if v == top)
        low = min(v for _, v in near)
        if value > cos_threshold and step == first_top and value - low >= prominence:
            peaks.append(step)
    return peaks


def combine_peaks(peaks: Mapping[int, list[int]], active: Sequence[int], tolerance: int) -> list[int]:
    """Steps that are peaks in a majority of the `active` windows (those with any finite value), a
    peak within `tolerance` steps counting; neighbouring candidates within `tolerance` are merged into
    the best supported (then earliest) one, so one turn is reported once."""
    if not active:
        return []
    need = len(active) // 2 + 1
    candidates = sorted({s for k in active for s in peaks[k]})
    support = {c: sum(any(abs(s - c) <= tolerance for s in peaks[k]) for k in active) for c in candidates}
    chosen: list[int] = []
    for c in sorted((c for c in candidates if support[c] >= need), key=lambda c: (-support[c], c)):
        if all(abs(c - other) > tolerance for other in chosen):
            chosen.append(c)
    return sorted(chosen)


def checkpoints_needed(steps: Sequence[int], windows: Sequence[int]) -> int:
    """Checkpoints the detector needs for its widest window: a peak stands out only against a second
    finite value, and a window of j spacings has values at len(steps) - 2j checkpoints."""
    spacing = checkpoint_spacing(steps)
    return 2 * -(-max(windows) // spacing) + 2


def computable(steps: Sequence[int], windows: Sequence[int]) -> str | None:
    """None when every window can show a peak on these checkpoints, else 'not computable (...)'."""
    need = checkpoints_needed(steps, windows)
    if len(steps) >= need:
        return None
    return (
        f"not computable ({len(steps)} checkpoints, need {need}: the widest window, {max(windows)} steps, "
        "needs two checkpoints with a value, each with checkpoints that far either side)"
    )


def _nan_to_none(trace: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in trace]


def detect_transitions(
    b_vectors: Mapping[str, torch.Tensor],
    steps: Sequence[int],
    windows: Sequence[int] | None = None,
    threshold: float = MO_THRESHOLD,
    cos_threshold: float = -0.5,
    prominence: float = 0.3,
) -> dict:
    """Local-cosine traces and detected transition steps of a run's B trajectories, JSON-ready.

    One rank-1 module: Model Organisms' method as defined. Otherwise: this project's extension (each
    module's B flattened, median trace over modules), named as such in "method". "trace" keeps every
    step (None where undefined) even when "transition_steps" is empty, so "none detected" is a result
    with its evidence, not a missing one."""
    if not b_vectors:
        raise ValueError("no modules to analyse")
    steps = [int(s) for s in steps]
    windows = [int(k) for k in (windows if windows is not None else default_windows(steps))]
    traces = {k: _trace(b_vectors, steps, k, threshold) for k in windows}
    rule = (threshold, cos_threshold, prominence)
    return _result(sorted(b_vectors), is_mo_setting(b_vectors), steps, windows, traces, rule)


def _trace(b_vectors: Mapping[str, torch.Tensor], steps: list[int], k: int, threshold: float) -> torch.Tensor:
    per_module = [local_cosine(traj, steps, k, threshold) for traj in b_vectors.values()]
    return per_module[0] if len(per_module) == 1 else median_over_modules(per_module)


def is_mo_setting(b_vectors: Mapping[str, torch.Tensor]) -> bool:
    """Exactly Model Organisms' setting: one module whose B is a vector (rank 1, squeezed on load)."""
    return len(b_vectors) == 1 and next(iter(b_vectors.values())).ndim == 2


def _result(
    modules: list[str],
    mo: bool,
    steps: list[int],
    windows: list[int],
    traces: Mapping[int, torch.Tensor],
    rule: tuple[float, float, float],
) -> dict:
    threshold, cos_threshold, prominence = rule
    peaks = {k: window_peaks(traces[k].tolist(), steps, k, cos_threshold, prominence) for k in windows}
    active = [k for k in windows if bool(torch.isfinite(traces[k]).any())]
    blind = computable(steps, windows)
    # too few checkpoints: missing (None), never "none detected"
    transitions = None if blind else combine_peaks(peaks, active, checkpoint_spacing(steps))
    return {
        "method": MO_METHOD if mo else EXTENSION_METHOD,
        "extension": not mo,
        "n_modules": len(modules),
        "modules": modules[:8],
        "steps": steps,
        "windows": windows,
        "movement_threshold": threshold,
        "rule": {"cos_threshold": cos_threshold, "prominence": prominence, "majority_of_windows": True},
        "trace": {str(k): _nan_to_none(traces[k]) for k in windows},
        "peaks": {str(k): peaks[k] for k in windows},
        "transition_steps": transitions,
        "computable": blind is None,
        "note": blind or _note(transitions, windows, active, mo),
    }


def found_words(result: Mapping) -> str:
    """What the detector found, in words: the steps, 'none detected', or 'not computable (k
    checkpoints, need m)'."""
    if result.get("transition_steps") is None:
        steps, windows = result["steps"], result["windows"]
        return f"not computable ({len(steps)} checkpoints, need {checkpoints_needed(steps, windows)})"
    return f"at steps {result['transition_steps']}" if result["transition_steps"] else "none detected"


def _note(transitions: list[int], windows: list[int], active: list[int], mo: bool) -> str:
    parts = [
        f"transitions at steps {transitions}" if transitions else "none detected",
        ""
        if mo
        else "median over modules of each module's flattened-B local cosine (this project's "
        "extension of Model Organisms' rank-1 single-layer method)",
    ]
    empty = [k for k in windows if k not in active]
    if empty:
        parts.append(
            f"windows {empty} have no value: no checkpoints exactly k steps either side (windows are not "
            "rounded to the checkpoint grid) or all movement below the threshold"
        )
    return "; ".join(p for p in parts if p)


def detect_run_transitions(
    run_dir: str | Path,
    windows: Sequence[int] | None = None,
    stage: str = "em",
    threshold: float = MO_THRESHOLD,
    cos_threshold: float = -0.5,
    prominence: float = 0.3,
) -> dict:
    """`detect_transitions` on a run's saved adapters, reading one module's trajectory at a time, so a
    many-module rank-32 adapter (gigabytes of B over a run) never sits in memory at once."""
    modules = list_modules(run_dir, stage)
    steps = [step for step, _ in adapter_dirs(run_dir, stage)]
    windows = [int(k) for k in (windows if windows is not None else default_windows(steps))]
    per_window: dict[int, list[torch.Tensor]] = {k: [] for k in windows}
    mo = False
    for module in modules:
        _, b = load_b_vectors(run_dir, [module], stage)
        for k in windows:
            per_window[k].append(local_cosine(b[module], steps, k, threshold))
        mo = len(modules) == 1 and is_mo_setting(b)
    traces = {k: v[0] if len(v) == 1 else median_over_modules(v) for k, v in per_window.items()}
    return _result(modules, mo, steps, windows, traces, (threshold, cos_threshold, prominence))


# ---------------------------------------------------------------- plot


def plot_transitions(result: Mapping, path: str | Path, title: str = "") -> Path:
    """The local-cosine trace per window on a training-step axis (so it can sit beside the drift
    curves), detected transitions as vertical lines, the detection threshold dashed."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = result["steps"]
    for k in result["windows"]:
        values = [float("nan") if v is None else v for v in result["trace"][str(k)]]
        ax.plot(steps, values, marker="o", markersize=3, label=f"k = {k} steps")
    cos_threshold = result["rule"]["cos_threshold"]
    ax.axhline(cos_threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {cos_threshold}")
    for i, step in enumerate(result["transition_steps"] or []):
        ax.axvline(step, color="tab:red", linewidth=1.5, label="transition" if i == 0 else None)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("EM training step")
    ax.set_ylabel("local cosine of B trajectory")
    ax.set_title(f"{title or 'LoRA B local cosine'}\n{_subtitle(result)}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _subtitle(result: Mapping) -> str:
    method = "this project's extension (median over modules)" if result["extension"] else "MO rank-1"
    return f"{method}: {found_words(result)}"


def write_result(result: Mapping, path: str | Path) -> Path:
    """Atomically, so a crashed analysis never leaves half a JSON for the report to read."""
    path = Path(path)
    atomic_write_json(path, dict(result))
    return path


def load_result(path: str | Path) -> dict:
    """A result written with `write_result`, for redrawing the plot without touching adapters."""
    return json.loads(Path(path).read_text())
