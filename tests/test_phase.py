"""Phase-transition detection on constructed B trajectories and PEFT-style adapter files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.phase import (
    EXTENSION_METHOD,
    MO_METHOD,
    checkpoint_spacing,
    combine_peaks,
    default_windows,
    detect_run_transitions,
    detect_transitions,
    load_b_vectors,
    load_result,
    local_cosine,
    plot_transitions,
    window_peaks,
    write_result,
)

STEPS = list(range(0, 101, 5))  # Model Organisms' spacing: a checkpoint every 5 steps


def corner(steps: list[int], turn_at: int = 50, dim: int = 16, speed: float = 0.01) -> torch.Tensor:
    """Straight along e0 until `turn_at`, then straight along e1: a 90-degree turn."""
    traj = torch.zeros(len(steps), dim)
    for i, s in enumerate(steps):
        traj[i, 0] = speed * min(s, turn_at)
        traj[i, 1] = speed * max(0, s - turn_at)
    return traj


def arc(steps: list[int], total_degrees: float = 30.0, dim: int = 16, radius: float = 1.0) -> torch.Tensor:
    """A slow circular arc in the e0-e1 plane: turns `total_degrees` over the whole run."""
    traj = torch.zeros(len(steps), dim)
    last = steps[-1]
    for i, s in enumerate(steps):
        theta = math.radians(total_degrees) * s / last
        traj[i, 0], traj[i, 1] = radius * math.sin(theta), radius * (1 - math.cos(theta))
    return traj


def test_straight_path_is_minus_one_and_corner_is_zero():
    cos = local_cosine(corner(STEPS), STEPS, 5)
    i50, i25 = STEPS.index(50), STEPS.index(25)
    assert cos[i50].item() == pytest.approx(0.0, abs=1e-9)
    assert cos[i25].item() == pytest.approx(-1.0, abs=1e-9)
    assert math.isnan(cos[0].item()) and math.isnan(cos[-1].item())  # window does not fit


def test_right_angle_turn_detected_at_step_50():
    result = detect_transitions({"model.layers.12.mlp.down_proj": corner(STEPS)}, STEPS)
    assert result["method"] == MO_METHOD and result["extension"] is False
    assert result["windows"] == [5, 10, 15]
    assert len(result["transition_steps"]) == 1
    assert abs(result["transition_steps"][0] - 50) <= 5
    assert all(50 in result["peaks"][str(k)] for k in (5, 10, 15))


def test_turn_between_checkpoints_found_within_one_checkpoint():
    result = detect_transitions({"m": corner(STEPS, turn_at=52)}, STEPS)
    assert len(result["transition_steps"]) == 1
    assert abs(result["transition_steps"][0] - 52) <= 5


@pytest.mark.parametrize("traj", [corner(STEPS, turn_at=1000), arc(STEPS, total_degrees=30.0)])
def test_straight_or_slowly_curving_path_has_none_detected(traj):
    result = detect_transitions({"m": traj}, STEPS)
    assert result["transition_steps"] == []
    assert result["note"].startswith("none detected")
    trace = [v for v in result["trace"]["5"] if v is not None]
    assert len(trace) == len(STEPS) - 2  # trace kept although nothing was found
    assert max(trace) < -0.9


def test_magnitude_threshold_suppresses_noise_only_steps():
    gen = torch.Generator().manual_seed(0)
    still = torch.randn(11, 64, generator=gen) * 1e-5  # steps 0..50: jitter, no real movement
    moving = torch.zeros(10, 64)
    moving[:, 0] = 0.01 * torch.arange(1, 11) * 5  # steps 55..100: straight drift
    traj = torch.cat([still, moving])
    unfiltered = local_cosine(traj, STEPS, 5, threshold=0.0)
    filtered = local_cosine(traj, STEPS, 5)
    noise_rows = range(1, 10)
    assert all(math.isfinite(unfiltered[i].item()) for i in noise_rows)
    assert all(math.isnan(filtered[i].item()) for i in noise_rows)
    assert filtered[STEPS.index(80)].item() == pytest.approx(-1.0, abs=1e-6)
    # the jitter alone produces no transition; Model Organisms' rule thresholds the larger of the two
    # displacements, so the onset of motion (still side = noise direction) can register, at the onset
    found = detect_transitions({"m": traj}, STEPS)["transition_steps"]
    assert all(abs(s - 50) <= 5 for s in found)
    noise_only = torch.randn(len(STEPS), 64, generator=gen) * 1e-5
    assert detect_transitions({"m": noise_only}, STEPS)["trace"]["5"] == [None] * len(STEPS)


def test_random_walk_has_no_peaks_thanks_to_prominence():
    gen = torch.Generator().manual_seed(1)
    walk = torch.cumsum(torch.randn(len(STEPS), 4096, generator=gen) * 0.01, dim=0)
    result = detect_transitions({"m": walk}, STEPS)
    values = [v for v in result["trace"]["5"] if v is not None]
    assert max(values) > -0.5  # above the threshold everywhere: prominence is what rejects them
    assert result["transition_steps"] == []


def test_windows_off_the_grid_give_nan_not_rounded():
    cos = local_cosine(corner(STEPS), STEPS, 7)
    assert bool(torch.isnan(cos).all())
    result = detect_transitions({"m": corner(STEPS)}, STEPS, windows=[7, 10])
    assert result["trace"]["7"] == [None] * len(STEPS)
    assert "windows [7] have no value" in result["note"]
    assert result["transition_steps"] == [50]  # majority of the windows with data (k=10 alone)


def test_off_grid_final_step_and_spacing():
    steps = [*range(0, 101, 25), 113]
    assert checkpoint_spacing(steps) == 25
    assert default_windows(steps) == [25, 50, 75]
    cos = local_cosine(torch.randn(len(steps), 3), steps, 25)
    assert math.isnan(cos[-2].item())  # step 100 has no partner at 125


def test_window_peaks_requires_threshold_and_local_max():
    steps = [0, 5, 10, 15, 20]
    assert window_peaks([-1, -1, -0.6, -1, -1], steps, 5) == []  # below -0.5
    assert window_peaks([-1, -0.2, 0.1, -1, -1], steps, 5) == [10]
    assert window_peaks([-1, 0.1, 0.1, -1, -1], steps, 5) == [5]  # a plateau counts once


def test_combine_peaks_majority_and_merge():
    peaks = {5: [50], 10: [55], 15: [90]}
    assert combine_peaks(peaks, [5, 10, 15], tolerance=5) == [50]
    assert combine_peaks(peaks, [5, 10, 15], tolerance=0) == []
    assert combine_peaks(peaks, [], tolerance=5) == []


def test_multi_module_median_is_labelled_extension():
    turning = {f"model.layers.{i}.mlp.down_proj": corner(STEPS).reshape(len(STEPS), 8, 2) for i in range(3)}
    straight = {"model.layers.9.mlp.down_proj": corner(STEPS, turn_at=1000).reshape(len(STEPS), 8, 2)}
    result = detect_transitions({**turning, **straight}, STEPS)
    assert result["method"] == EXTENSION_METHOD and result["extension"] is True
    assert "this project's extension" in result["note"]
    assert result["n_modules"] == 4
    assert result["transition_steps"] == [50]
    # one turning module out of four does not move the median
    one = {"a": corner(STEPS), **{f"s{i}": corner(STEPS, turn_at=1000) for i in range(3)}}
    assert detect_transitions(one, STEPS)["transition_steps"] == []


def write_adapter(root: Path, step: int, tensors: dict[str, torch.Tensor], rank: int) -> None:
    """A PEFT-style checkpoint: adapter_config.json + adapter_model.safetensors."""
    folder = root / "em" / "checkpoints" / f"step-{step:05d}"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["down_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def lora_keys(layer: int, proj: str) -> tuple[str, str]:
    base = f"base_model.model.model.layers.{layer}.mlp.{proj}"
    return f"{base}.lora_A.weight", f"{base}.lora_B.weight"


def test_load_rank1_single_module_and_detect(tmp_path: Path):
    traj = corner(STEPS, dim=12)
    a_key, b_key = lora_keys(12, "down_proj")
    for i, step in enumerate(reversed(STEPS)):  # written out of order: loading must sort
        row = len(STEPS) - 1 - i
        write_adapter(tmp_path, step, {a_key: torch.ones(1, 20), b_key: traj[row].unsqueeze(1)}, rank=1)
    steps, b = load_b_vectors(tmp_path)
    assert steps == STEPS
    assert list(b) == ["model.layers.12.mlp.down_proj"]
    assert b["model.layers.12.mlp.down_proj"].shape == (len(STEPS), 12)
    assert torch.allclose(b["model.layers.12.mlp.down_proj"], traj)
    result = detect_run_transitions(tmp_path)
    assert result["method"] == MO_METHOD and result["transition_steps"] == [50]
    assert result == detect_transitions(b, steps)


def test_load_multi_module_rank2(tmp_path: Path):
    steps = STEPS[:7]
    gen = torch.Generator().manual_seed(2)
    truth = {}
    for step in steps:
        tensors = {}
        for layer, proj, out in [(0, "down_proj", 6), (1, "q_proj", 10)]:
            a_key, b_key = lora_keys(layer, proj)
            b = torch.randn(out, 2, generator=gen)
            tensors[a_key], tensors[b_key] = torch.randn(2, 4, generator=gen), b
            truth.setdefault(b_key, []).append(b)
        write_adapter(tmp_path, step, tensors, rank=2)
    loaded_steps, b = load_b_vectors(tmp_path)
    assert loaded_steps == steps
    assert sorted(b) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.q_proj"]
    assert b["model.layers.1.mlp.q_proj"].shape == (7, 10, 2)
    assert torch.equal(b["model.layers.0.mlp.down_proj"], torch.stack(truth[lora_keys(0, "down_proj")[1]]))
    only, sub = load_b_vectors(tmp_path, modules=["model.layers.1.mlp.q_proj"])
    assert list(sub) == ["model.layers.1.mlp.q_proj"]
    result = detect_run_transitions(tmp_path)
    assert result["extension"] is True and result["n_modules"] == 2
    assert result == detect_transitions(b, steps)


def test_checkpoint_missing_a_module_fails(tmp_path: Path):
    a0, b0 = lora_keys(0, "down_proj")
    a1, b1 = lora_keys(1, "down_proj")
    write_adapter(tmp_path, 0, {a0: torch.ones(1, 4), b0: torch.ones(6, 1)}, rank=1)
    write_adapter(
        tmp_path,
        5,
        {a0: torch.ones(1, 4), b0: torch.ones(6, 1), a1: torch.ones(1, 4), b1: torch.ones(6, 1)},
        rank=1,
    )
    with pytest.raises(ValueError, match="module set differs"):
        load_b_vectors(tmp_path)


def test_no_adapters_is_an_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_b_vectors(tmp_path)


def test_result_roundtrip_and_plot(tmp_path: Path):
    found = detect_transitions({"m": corner(STEPS)}, STEPS)
    none = detect_transitions({"m": arc(STEPS)}, STEPS)
    for name, result in [("found", found), ("none", none)]:
        path = write_result(result, tmp_path / f"{name}.json")
        back = load_result(path)
        assert back["transition_steps"] == result["transition_steps"]
        png = plot_transitions(back, tmp_path / f"{name}.png", title=f"test {name}")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "none.json").read_text())["trace"]["5"][0] is None


def test_too_few_checkpoints_is_not_computable_never_none_detected(tmp_path):
    """The CPU default's five checkpoints cannot support windows of 1-3 spacings: the result says so
    (and the plot), while eight checkpoints find the turn."""
    from analysis.phase import checkpoints_needed, found_words

    few = [0, 5, 10, 15, 20]
    result = detect_transitions({"m": corner(few, turn_at=10)}, few)
    assert result["transition_steps"] is None and not result["computable"]
    assert found_words(result) == "not computable (5 checkpoints, need 8)"
    assert result["note"].startswith("not computable (5 checkpoints, need 8:")
    assert "none detected" not in result["note"]
    plot_transitions(result, tmp_path / "few.png")  # draws, with the words instead of an empty panel
    enough = list(range(0, 40, 5))
    assert checkpoints_needed(enough, [5, 10, 15]) == 8 == len(enough)
    found = detect_transitions({"m": corner(enough, turn_at=20)}, enough)
    assert found["computable"] and found["transition_steps"] == [20]
