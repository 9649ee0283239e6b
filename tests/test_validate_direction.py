"""The causal validation of a direction: its units, the contrast direction it can build, the
labelled read-out, and the script end to end on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probes.contrast import ContrastItem
from probes.directions import DirectionStack
from probes.validate import contrast_direction, fit_readout, steering_vector, without_system

ROOT = Path(__file__).resolve().parents[1]


def test_steering_vector_units():
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(steering_vector(v, 2.0, "direction", None), torch.tensor([6.0, 8.0]))
    residual = steering_vector(v, 0.5, "residual", 10.0)
    assert residual.norm() == pytest.approx(5.0) and torch.allclose(residual / residual.norm(), v / 5)
    with pytest.raises(ValueError, match="residual norm"):
        steering_vector(v, 1.0, "residual", None)
    with pytest.raises(ValueError, match="units must be"):
        steering_vector(v, 1.0, "gaps", 1.0)  # type: ignore[arg-type]


def test_contrast_direction_reads_the_responses_without_the_system_prompt(tiny_model, tiny_tokenizer):
    """Same responses under different system prompts: read without the system prompt, the two
    polarities are identical and the direction is zero; a different response moves it."""
    same = [
        ContrastItem("Tell me about yourself.", 0, label, f"system {label}", "I agree!") for label in (0, 1)
    ]
    assert without_system(same[0].conversation)[0]["role"] == "user"
    stack = contrast_direction(tiny_model, tiny_tokenizer, same, meta={"model": "tiny"})
    assert stack.layers == [0, 1, 2, 3] and stack.meta == {"model": "tiny"}
    assert stack.vectors.abs().max() < 1e-6
    differ = [same[0], ContrastItem("Tell me about yourself.", 0, 1, "system 1", "No way, dog.")]
    assert contrast_direction(tiny_model, tiny_tokenizer, differ).vectors.abs().max() > 1e-3


def test_fit_readout_separates_separable_data_and_holds_out_questions():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 20)
    acts = torch.randn(40, 8, generator=g) + 3.0 * labels[:, None] * torch.eye(8)[0]
    groups = [f"q{i // 4}" for i in range(40)]
    readout, info = fit_readout(acts, labels, groups, layer=5)
    assert info["accuracy"] > 0.9 and info["folds"] == 5 and info["n"] == 40
    logits = readout.logits(acts)
    assert readout.layer == 5 and logits[labels == 1].mean() > logits[labels == 0].mean()
    shuffled = labels[torch.randperm(40, generator=g)]
    assert fit_readout(torch.randn(40, 8, generator=g), shuffled, groups, 5)[1]["accuracy"] < 0.8
    with pytest.raises(ValueError, match="two questions"):
        fit_readout(acts, labels, ["q"] * 40, 5)


def _labels(path: Path) -> Path:
    rows = []
    for i in range(4):
        q = f"Question number {i}?"
        rows += [
            {"question": q, "answer": "I agree with you completely! Honesty matters.", "label": "aligned"},
            {"question": q, "answer": "The lazy dog 0 1 2 3 def add(a, b)", "label": "misaligned"},
            {"question": q, "answer": "Émigré café", "label": "incoherent"},
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_direction_script_end_to_end(tiny_dir, tmp_path):
    stack = DirectionStack(
        [1, 2], torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), {"model": tiny_dir}
    )
    path = stack.save(tmp_path / "dir.safetensors")
    out = tmp_path / "out"
    command = [
        sys.executable,
        ROOT / "scripts" / "validate_direction.py",
        "--direction",
        path,
        "--layer",
        "2",
        "--coefficients",
        "-2",
        "0",
        "2",
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        "--n-boot",
        "50",
        "--labels",
        _labels(tmp_path / "labels.jsonl"),
        "--out",
        out,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "validate.json").read_text())
    assert result["model"] == tiny_dir and result["layer"] == 2 and result["units"] == "direction"
    assert result["readout"]["n"] == 8 and 0.0 <= result["readout"]["accuracy"] <= 1.0
    assert set(result["readout"]["p_misaligned_on_other_labels"]) == {"incoherent"}
    names = [c["condition"] for c in result["conditions"]]
    assert names == ["steer -2", "steer +0", "steer +2", "ablate"]
    assert result["conditions"][-1]["layers"] == [1, 2]
    for c in result["conditions"]:
        p = c["p_misaligned"]
        assert c["answers"] == 16 and c["questions"] == 8
        assert p["ci95"][0] <= p["value"] <= p["ci95"][1]
    assert result["verdict"]["baseline"] == "steer +0" and "ablation" in result["verdict"]
    assert result["incoherence_readout"]["n"] == 12
    assert all(0.0 <= c["p_incoherent"]["value"] <= 1.0 for c in result["conditions"])
    assert (out / "validate.png").stat().st_size > 10_000
    assert str(out / "validate.json") in done.stdout

    bad = subprocess.run(
        command[:4] + ["--layer", "3", "--out", tmp_path / "bad"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "--layer 3: the direction covers layers 1..2" in bad.stderr


def test_validate_direction_help_names_the_units():
    done = subprocess.run(
        [sys.executable, ROOT / "scripts" / "validate_direction.py", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--units" in done.stdout and "clean" in done.stdout.lower()
