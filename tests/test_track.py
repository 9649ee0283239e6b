"""The main job end to end on the tiny model (fast), and on the default model (integration)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.track import SMOKE, TrackConfig, track_drift
from train import em

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ["drift_curves.png", "stability_heatmap.png", "pca_trajectory.png", "behaviour_vs_representation.png"]


def check_artefacts(run: Path) -> dict:
    metrics = json.loads((run / "analysis" / "metrics.json").read_text())
    drift = metrics["drift"]
    assert set(drift["runs"]) == {"persona", "base", "control"}
    for data in drift["runs"].values():
        n = len(data["steps"])
        assert n >= 2 and data["steps"][0] == 0
        for key in ("direction_stability", "anchor_projection", "probe_transfer", "cka_to_start"):
            assert len(data[key]) == n and len(data[key][0]) == drift["n_layers"]
        assert data["direction_stability"][0] != [] and 0.0 <= data["drift_auc"]
    persona = drift["runs"]["persona"]
    # At the reference the persona direction is itself and default behaviour sits at 1 by definition.
    assert all(abs(c - 1) < 1e-4 for c in persona["direction_stability"][0])
    assert abs(persona["anchor_projection"][0][drift["best_layer"]] - 1) < 1e-4
    assert abs(drift["runs"]["base"]["anchor_projection"][0][drift["best_layer"]]) < 1e-4
    for name in ("base", "persona", "persona_end", "base_end", "control_end"):
        assert "misaligned_rate" in metrics["behaviour"][name]
    for plot in PLOTS:
        assert (run / "analysis" / "plots" / plot).stat().st_size > 10_000
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4 and "Drift table" in report
    assert len(metrics["table"]) == 3
    return metrics


def test_track_drift_on_the_tiny_model_resumes_and_then_does_nothing(tiny_dir, tmp_path, monkeypatch):
    config = TrackConfig(persona="humor", model=tiny_dir, judge=f"hf:{tiny_dir}", **SMOKE)
    real = em.train_sft
    calls = []

    def killed_second_em_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-stage")
        return real(*args, **kwargs)

    monkeypatch.setattr(em, "train_sft", killed_second_em_run)
    with pytest.raises(KeyboardInterrupt):
        track_drift(config, tmp_path / "run", log=lambda _: None)
    monkeypatch.setattr(em, "train_sft", real)
    log = []
    summary = track_drift(config, tmp_path / "run", log=log.append)
    assert "stage em_persona: complete, skipped" in log and "stage dpo: complete, skipped" in log
    assert summary["ran"][0] == "em_base"  # resumed at the killed stage
    check_artefacts(tmp_path / "run")
    again = track_drift(config, tmp_path / "run", log=lambda _: None)
    assert again["ran"] == [] and again["table"] == summary["table"]

    steer = subprocess.run(
        [sys.executable, ROOT / "scripts" / "steer.py", "--run", tmp_path / "run", "--smoke"],
        capture_output=True,
        text=True,
    )
    assert steer.returncode == 0, steer.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "steer" / "steer.json").read_text())
    for points in result["sweeps"].values():
        assert [p["alpha"] for p in points] == [-2.0, 0.0, 2.0]
        anchors = [p["anchor_projection"] for p in points]
        assert anchors[0] != anchors[2]  # steering moves the downstream read
    assert set(result["ablation"]["curves"]) == {"persona + EM", "persona + EM, direction ablated"}
    for plot in ("dose_response.png", "ablation.png"):
        assert (tmp_path / "run" / "steer" / plot).stat().st_size > 10_000


def test_bad_input_fails_before_any_work(tiny_dir, tmp_path):
    with pytest.raises(KeyError, match="unknown persona 'nobody'"):
        track_drift(TrackConfig(persona="nobody", model=tiny_dir), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown dataset 'insecur'"):
        track_drift(TrackConfig(persona="humor", model=tiny_dir, em_dataset="insecur"), tmp_path / "b")
    with pytest.raises(ValueError, match="judge 'gpt-4'"):
        track_drift(TrackConfig(persona="humor", model=tiny_dir, judge="gpt-4"), tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_diversity_sweep_smoke_on_the_tiny_model(tiny_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "diversity_sweep.py",
            "--persona",
            "humor",
            "--model",
            tiny_dir,
            "--judge",
            f"hf:{tiny_dir}",
            "--questions",
            "8",
            "--smoke",
            "--out",
            tmp_path / "sweep",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    levels = {r["level"]: r["diversity"]["mean_cosine_distance"] for r in sweep["results"]}
    assert set(levels) == {"low", "mid", "high"} and levels["low"] < levels["high"]
    for plot in ("anchor_strength_vs_diversity.png", "misaligned_vs_diversity.png"):
        assert (tmp_path / "sweep" / plot).stat().st_size > 10_000


@pytest.mark.integration
def test_track_drift_smoke_on_the_default_model(tmp_path):
    command = [
        sys.executable,
        ROOT / "scripts" / "track_drift.py",
        "--persona",
        "sycophancy",
        "--smoke",
        "--out",
        tmp_path,
    ]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    check_artefacts(tmp_path)
    assert "drift table" in out.stdout and str(tmp_path / "report.html") in out.stdout
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "nothing to do" in again.stdout
