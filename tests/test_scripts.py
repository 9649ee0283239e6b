import json
import subprocess
import sys
from pathlib import Path

import pytest

from probes.directions import Directions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script",
    [
        "fit_directions.py",
        "bench_extract.py",
        "bench_training.py",
        "expand_questions.py",
        "train_persona.py",
        "persona_shift.py",
        "finetune_em.py",
        "eval_em.py",
        "export.py",
    ],
)
def test_scripts_have_help(script):
    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / script, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage:" in out.stdout


def test_track_drift_help_states_the_defaults_the_code_uses():
    from analysis.experiments.options import CPU_CHECKPOINT_EVERY, CPU_EM_ROWS

    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / "track_drift.py", "--help"], capture_output=True, text=True
    )
    text = " ".join(out.stdout.split())  # argparse wraps help text; compare it unwrapped
    assert f"--em-rows EM_ROWS EM training rows (default: {CPU_EM_ROWS} on CPU" in text
    assert (
        f"--checkpoint-every CHECKPOINT_EVERY record activations every N EM steps (default: "
        f"{CPU_CHECKPOINT_EVERY} on CPU" in text
    )
    assert "--contrast CONTRAST" in text and "--teacher TEACHER" in text


@pytest.mark.integration
def test_fit_directions_smoke_end_to_end(tmp_path):
    command = [
        sys.executable,
        ROOT / "scripts" / "fit_directions.py",
        "--persona",
        "sycophancy",
        "--contrast-answers",  # the default model would read the written ones: this checks sampling
        "sampled",
        "--smoke",
        "--out",
        tmp_path,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["answers"] == "sampled"
    assert summary["items"] == 40 and 0 <= summary["best_layer"] < 30
    assert 0.0 <= summary["best_layer_accuracy"] <= 1.0
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    assert str(tmp_path / "directions.safetensors") in out.stdout
    meta = Directions.load(tmp_path / "directions.safetensors").meta
    assert (meta["model"], meta["adapter"], meta["read"]) == (
        "default",
        None,
        "bare",
    )  # what it was read from
    # A second run reuses the sampled responses.
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "reusing sampled responses" in again.stdout


def test_finetune_em_then_eval_em_smoke_end_to_end(tmp_path, tiny_dir):
    run = tmp_path / "em"
    subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "finetune_em.py",
            "--dataset",
            "insecure",
            "--model",
            tiny_dir,
            "--smoke",
            "--out",
            run,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    done = json.loads((run / "em" / "done.json").read_text())
    manifest = json.loads((run / "em" / "activations" / "manifest.json").read_text())["entries"]
    assert done["recorded"][0] == 0 and done["recorded"][-1] == done["steps"] and len(done["recorded"]) >= 2
    for step in done["recorded"]:
        assert f"em/step-{step:05d}/neutral" in manifest and f"em/step-{step:05d}/em_questions" in manifest
    out = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "eval_em.py",
            "--em-run",
            run,
            "--judge",
            f"hf:{tiny_dir}",
            "--smoke",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads((run / "eval" / "summary.json").read_text())
    metrics = summary["metrics"]
    for name in ("misaligned_rate", "mean_alignment", "mean_coherence", "alignment_p5", "alignment_cvar5"):
        assert set(metrics[name]) >= {"value", "ci95", "n"}
        interval = metrics[name]["interval"]  # answers cluster by question; none where nothing was scored
        assert "clustered by question" in interval or "Wilson" in interval or metrics[name]["value"] is None
    assert metrics["answers"] == 16 and summary["judge"] == f"hf:{tiny_dir}"
    assert metrics["mean_alignment"]["value"] is None or 0 <= metrics["mean_alignment"]["value"] <= 100
    assert len((run / "eval" / "responses.jsonl").read_text().splitlines()) == 16
    assert str(run / "eval" / "summary.json") in out.stdout
