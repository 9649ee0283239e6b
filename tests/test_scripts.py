import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script",
    [
        "fit_directions.py",
        "bench_extract.py",
        "expand_questions.py",
        "train_persona.py",
        "persona_shift.py",
        "finetune_em.py",
        "eval_em.py",
    ],
)
def test_scripts_have_help(script):
    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / script, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage:" in out.stdout


def test_track_drift_help_states_the_defaults_the_code_uses():
    from analysis.track import CPU_CHECKPOINT_EVERY, CPU_EM_ROWS

    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / "track_drift.py", "--help"], capture_output=True, text=True
    )
    text = " ".join(out.stdout.split())  # argparse wraps help text; compare it unwrapped
    assert f"--em-rows EM_ROWS EM training rows (default: {CPU_EM_ROWS} on CPU" in text
    assert (
        f"--checkpoint-every CHECKPOINT_EVERY record activations every N EM steps (default: {CPU_CHECKPOINT_EVERY} on CPU"
        in text
    )
    assert "--contrast CONTRAST" in text and "--teacher TEACHER" in text
