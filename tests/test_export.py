"""Vectors out (`probes.export`, `scripts/export.py`): a fake finished run, saved with the project's
own savers, exported and read back with each format's own reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from safetensors import safe_open

from anchor.extract import Activations
from anchor.inputs import InputError
from anchor.store import ActivationStore
from probes.directions import Directions, DirectionStack, ProbeFit
from probes.export import export_run

N_LAYERS, D = 4, 8
LAYERS = [0, 1, 3]  # layer 2 not read: a zero row in the .pt, no tensor elsewhere
CONFIG = {"persona": "humor", "model": "org/tiny-model", "seed": 0}


def fake_run(root: Path, model: str = CONFIG["model"], axis: bool = True) -> Path:
    """A finished main-job run's layout (analysis/experiments/track.py): config.json, the three
    direction files in finished stages, one finished EM store, one interrupted and one superseded."""
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**CONFIG, "model": model}))
    n = len(LAYERS)
    probe = ProbeFit(torch.randn(n, D), torch.zeros(n), [0.6, 0.9, 0.7], [0.7, 0.95, 0.8])
    persona = Directions(LAYERS, torch.randn(n, D), torch.randn(n, D), probe, {"model": "persona/dpo/merged"})
    persona.save(run / "analysis" / "directions.safetensors")
    meta = {"model": model, "source": "misalignment contrast pairs", "items": 12}
    DirectionStack(LAYERS, torch.randn(n, D), meta).save(run / "misalignment" / "direction.safetensors")
    stages = ["analysis", "misalignment"]
    if axis:
        DirectionStack(LAYERS, torch.randn(n, D), {"method": "axis"}).save(
            run / "assistant_axis" / "axis.safetensors"
        )
        stages.append("assistant_axis")
    for i, stage in enumerate(stages):
        (run / stage / "done.json").write_text(json.dumps({"key": f"k{i}", "run_id": f"r{i}"}))

    store = ActivationStore(run / "em_persona" / "em" / "activations")
    for step in (0, 8):
        acts = Activations(
            torch.randn(3, N_LAYERS, D), list(range(N_LAYERS)), "response_mean", ["a", "b", "c"], "h1"
        )
        store.save(f"em/step-{step:05d}/persona_contrast", acts, {"checkpoint": f"em/step-{step:05d}"})
    tokens = Activations(
        torch.randn(5, N_LAYERS, D), list(range(N_LAYERS)), "all_tokens", ["x", "y"], "h2", [2, 3]
    )
    store.save("em/step-00000/neutral", tokens, {"checkpoint": "em/step-00000", "probe_set": "neutral"})
    (run / "em_persona" / "em" / "done.json").write_text("{}")
    one = Activations(torch.randn(1, N_LAYERS, D), list(range(N_LAYERS)), "response_mean", ["z"], "h3")
    ActivationStore(run / "em_base" / "em" / "activations").save("em/step-00000/x", one)  # no done.json
    ActivationStore(run / "superseded" / "em_control@abc" / "em" / "activations").save("em/step-00000/x", one)
    return run


@pytest.fixture
def run(tmp_path) -> Path:
    return fake_run(tmp_path)


@pytest.fixture
def exported(run, tmp_path) -> tuple[Path, Path, dict]:
    out = tmp_path / "out"
    return run, out, export_run(run, out, N_LAYERS, "llama", log=lambda _: None)


def test_pt_is_the_persona_vectors_layout_with_zero_rows_where_nothing_was_read(exported):
    run, out, _ = exported
    for name, stack in (
        ("misalignment", DirectionStack.load(run / "misalignment" / "direction.safetensors")),
        (
            "persona",
            DirectionStack(
                LAYERS, Directions.load(run / "analysis" / "directions.safetensors").diff_in_means
            ),
        ),
    ):
        rows = torch.load(out / f"{name}.pt", weights_only=True)
        assert rows.shape == (N_LAYERS + 1, D) and rows.dtype == torch.float32
        for i, layer in enumerate(LAYERS):
            assert torch.equal(rows[layer + 1], stack.vectors[i])
        assert not rows[0].any() and not rows[2 + 1].any()  # embeddings row; layer 2, never read
        # the project's own reader of published tensors aligns it back
        back = DirectionStack.load(out / f"{name}.pt", n_layers=N_LAYERS)
        assert back.meta["layout"] == "persona_vectors" and torch.equal(back.at(3), stack.at(3))


def test_safetensors_are_keyed_by_hook_names(exported):
    run, out, _ = exported
    stack = DirectionStack.load(run / "assistant_axis" / "axis.safetensors")
    with safe_open(str(out / "assistant_axis.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(f"blocks.{layer}.hook_resid_post" for layer in LAYERS)
        for layer in LAYERS:
            assert torch.equal(f.get_tensor(f"blocks.{layer}.hook_resid_post"), stack.at(layer))
        assert json.loads(f.metadata()["layers"]) == LAYERS


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_gguf_is_a_llama_cpp_control_vector(exported):
    run, out, _ = exported
    stack = DirectionStack.load(run / "misalignment" / "direction.safetensors")
    reader = GGUFReader(out / "misalignment.gguf")
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == len(LAYERS)
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == [f"direction.{layer + 1}" for layer in LAYERS]  # never direction.0
    for layer in LAYERS:
        t = tensors[f"direction.{layer + 1}"]
        assert t.tensor_type == GGMLQuantizationType.F32 and list(t.shape) == [D]
        np.testing.assert_array_equal(np.asarray(t.data), stack.at(layer).numpy())


def test_card_says_what_the_vectors_are_and_where_they_came_from(exported):
    run, out, written = exported
    card = json.loads((out / "persona.card.json").read_text())
    source = run / "analysis" / "directions.safetensors"
    assert card["run"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert card["run"]["config"] == CONFIG and card["run"]["stage"] == {
        "folder": "analysis",
        "key": "k0",
        "run_id": "r0",
    }
    assert card["model"] == "persona/dpo/merged" and card["run_model"] == CONFIG["model"]
    assert card["layers"] == LAYERS and card["n_layers"] == N_LAYERS and card["d_model"] == D
    assert card["formats"]["pt"]["rows_with_data"] == [1, 2, 4]
    assert card["formats"]["gguf"]["tensors"] == ["direction.1", "direction.2", "direction.4"]
    assert (
        card["read"]["method"] == "diff_in_means"
        and card["read"]["source"] == "analysis/directions.safetensors"
    )
    vectors = Directions.load(source).diff_in_means
    assert [row["norm"] for row in card["norms"]] == pytest.approx(vectors.double().norm(dim=-1).tolist())
    misalignment = json.loads((out / "misalignment.card.json").read_text())
    assert misalignment["read"]["meta"]["items"] == 12  # the direction's own metadata
    assert set(written) == {"persona", "misalignment", "assistant_axis", "activations"}


def test_persona_method_picks_the_directions_method(run, tmp_path):
    out = tmp_path / "pca"
    export_run(run, out, N_LAYERS, "llama", activations=False, persona_method="pca")
    rows = torch.load(out / "persona.pt", weights_only=True)
    assert torch.equal(rows[4], Directions.load(run / "analysis" / "directions.safetensors").pca[2])
    assert not (out / "activations").exists()


def test_activations_round_trip_through_datasets(exported, tmp_path):
    from datasets import Dataset

    run, out, _ = exported
    store = ActivationStore(run / "em_persona" / "em" / "activations")
    index = json.loads((out / "activations" / "index.json").read_text())
    assert sorted(e["entry"] for e in index["entries"]) == sorted(
        store.list()
    )  # em_base: skipped; superseded: out
    assert [s["stage"] for s in index["skipped"]] == ["em_base/em"]
    for name in store.list():
        path = out / "activations" / "em_persona" / "em" / f"{name}.parquet"
        ds = Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf"))
        rows, tensors = ds[:], ds.with_format("torch")[:]
        acts = store.load(name)
        assert len(ds) == acts.tensor.shape[0]
        for layer in acts.layers:
            assert torch.equal(tensors[f"blocks.{layer}.hook_resid_post"], acts.layer(layer))
        assert set(rows["stage"]) == {"em_persona/em"} and set(rows["entry"]) == {name}
        assert json.loads(rows["meta"][0]) == store.meta(name)
        if acts.lengths is None:
            assert rows["id"] == acts.ids and rows["token"] == [None] * len(acts.ids)
        else:
            assert rows["id"] == ["x", "x", "y", "y", "y"] and rows["token"] == [0, 1, 0, 1, 2]
    # one stage's entries share their layers, so they load as one dataset
    files = sorted(str(p) for p in (out / "activations" / "em_persona").rglob("*.parquet"))
    assert len(Dataset.from_parquet(files, cache_dir=str(tmp_path / "hf"))) == 3 + 3 + 5


def test_a_run_without_directions_names_the_missing_file(tmp_path):
    run = fake_run(tmp_path, axis=False)
    export_run(run, tmp_path / "ok", N_LAYERS, "llama", activations=False)  # no axis: fine, none exported
    assert not (tmp_path / "ok" / "assistant_axis.pt").exists()
    (run / "misalignment" / "done.json").unlink()
    with pytest.raises(
        InputError, match=r"misalignment/done\.json: no such file; the misalignment/ stage did not finish"
    ):
        export_run(run, tmp_path / "out", N_LAYERS, "llama")
    (run / "analysis" / "directions.safetensors").unlink()
    with pytest.raises(
        InputError, match=r"analysis/directions\.safetensors: no such file; the run has no persona"
    ):
        export_run(run, tmp_path / "out", N_LAYERS, "llama")
    with pytest.raises(InputError, match="no config.json"):
        export_run(tmp_path, tmp_path / "out", N_LAYERS, "llama")
    assert not (tmp_path / "out").exists()


def test_a_depth_that_does_not_fit_the_layers_fails_before_writing(run, tmp_path):
    with pytest.raises(InputError, match=r"layers \[3\] do not fit a 3-layer model \(--n-layers\)"):
        export_run(run, tmp_path / "out", 3, "llama")
    assert not (tmp_path / "out").exists()


def test_the_command_reads_depth_and_architecture_from_the_run_model(tmp_path, tiny_dir, command, capsys):
    run = fake_run(tmp_path / "r", model=tiny_dir)
    main = command("export.py")
    main(["--run", str(run), "--no-activations"])
    printed = capsys.readouterr().out
    out = run / "export"
    assert str(out / "persona.gguf") in printed and "llama, 4 layers" in printed
    assert torch.load(out / "misalignment.pt", weights_only=True).shape == (N_LAYERS + 1, D)
    assert json.loads((out / "persona.card.json").read_text())["model_hint"] == "llama"
    with pytest.raises(SystemExit):
        main(["--run", str(tmp_path / "nowhere")])
    assert "no such directory" in capsys.readouterr().err
