"""The walkthrough notebook (examples/quickstart.ipynb) runs end to end in a real Jupyter kernel, on
the tiny model, with a fake finished run and the probe judge, so it cannot rot.

The kernel is the spec `python3`: jupyter_client starts a spec whose command is `python` with this
process's `sys.executable` (and ipykernel's own spec is built from it), so the notebook runs in the
same environment as the tests; the injected cell prints the kernel's interpreter and the test checks it.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from analysis.interaction import pool_interaction
from analysis.stats import estimate, unmeasured

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
# a valid 1x1 PNG, standing in for a run's plots
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def parameters_index(nb) -> int:
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    return index


def fake_run(root: Path) -> Path:
    """A finished run's analysis folder as `track_report.analyse` writes it, with made-up numbers:
    the persona interaction built by the project's own pooling (one seed, its bootstrap interval),
    the misalignment one unmeasured, some headline numbers missing and no contrast-pair entry."""
    run = root / "run"
    (run / "analysis" / "plots").mkdir(parents=True)
    persona = pool_interaction([{"by_layer": {"interaction": [0.0, 0.1, 0.4321, 0.2]}}], 2, "persona")
    persona["interaction"]["ci95"] = [
        0.1,
        0.7,
    ]  # one seed: the bootstrap over prompts, as one_seed_interaction
    metrics = {
        "seed": 0,
        "interaction": {
            "persona": persona,
            "misalignment": {"layer": 2, "interaction": unmeasured(1, "no misalignment read")},
        },
        "headline": {
            "anchor_after": {"persona": estimate(0.75, [0.5, 1.0], 12), "base": None},
            "misaligned_rate": {"base": estimate(None, None, 0, "no scored answers")},
        },
        "judge": {"spec": "hf:tiny", "note": "A made-up judge note."},
    }
    (run / "analysis" / "metrics.json").write_text(json.dumps(metrics))
    (run / "analysis" / "plots" / "drift_curves.png").write_bytes(PNG)
    (run / "analysis" / "report.html").write_text("<html></html>")
    (run / "report.html").write_text("<html></html>")
    return run


def test_the_committed_notebook_has_no_outputs_and_defaults_to_the_default_model():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    source = nb.cells[parameters_index(nb)].source
    for default in ('MODEL = "default"', "RUN = None", 'JUDGE = "distilled:default"'):
        assert default in source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_on_the_tiny_model(tiny_dir, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path / "out"
    directions = out / "directions.safetensors"
    params = {
        "MODEL": tiny_dir,
        "RUN": str(fake_run(tmp_path)),
        "JUDGE": f"probe:{directions}",  # the persona probe the notebook saves: a judge the tiny model can run
        "OUT": str(out),
        "N_QUESTIONS": 8,
        "MAX_NEW_TOKENS": 8,
    }
    injected = "import sys\nprint('kernel python:', sys.executable)\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    cell = nbformat.v4.new_code_cell(injected)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, cell)

    # raises CellExecutionError, naming the cell, if any cell fails
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert f"kernel python: {sys.executable}\n" in text

    # the persona direction: one row per layer of the tiny model (4 x 64), a probe scored on held-out questions
    assert "persona direction: [4, 64] (layers x d_model)" in text
    assert re.search(r"held-out probe accuracy at layer 2: [01]\.\d\d \(chance ceiling", text)
    assert directions.is_file()

    # steering: three conditions, each read clean by the probe
    for name in ("unsteered", "alpha +4", "alpha -4"):
        assert re.search(rf"{re.escape(name)}: persona probe probability (\d\.\d\d|nan)", text)

    # the run: the interaction as metrics.json holds it; absent numbers missing, never 0
    assert "persona: layer 2, interaction +0.432 [+0.100, +0.700] (n = 1)" in text
    assert "missing (no misalignment read)" in text
    assert "anchor_after / persona: +0.750 [+0.500, +1.000] (n = 12)" in text
    assert "anchor_after / base: missing\n" in text
    assert "misaligned_rate / base: missing (no scored answers)" in text
    assert "Contrast pairs\n  missing" in text
    assert "1 plots in" in text
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in outputs)

    # the judge: the card's number, and the probe judge's trait scores (other rubrics missing)
    assert re.search(r"leave-one-model-out AUROC 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", text)
    assert f"judge probe:{directions}" in text
    assert re.search(r"the model, unsteered\s+aligned missing, coherent missing, trait\s+\d+\.\d", text)
    assert "6 judgements missing" in text
