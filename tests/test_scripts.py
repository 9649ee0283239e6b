import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script",
    ["fit_directions.py", "bench_extract.py", "expand_questions.py", "train_persona.py", "persona_shift.py"],
)
def test_scripts_have_help(script):
    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / script, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage:" in out.stdout


@pytest.mark.integration
def test_fit_directions_smoke_end_to_end(tmp_path):
    command = [
        sys.executable,
        ROOT / "scripts" / "fit_directions.py",
        "--persona",
        "sycophancy",
        "--smoke",
        "--out",
        tmp_path,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["items"] == 40 and 0 <= summary["best_layer"] < 30
    assert 0.0 <= summary["best_layer_accuracy"] <= 1.0
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    assert str(tmp_path / "directions.safetensors") in out.stdout
    # A second run reuses the sampled responses.
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "reusing sampled responses" in again.stdout
