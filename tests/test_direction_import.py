"""Published direction tensors in and out: the two layouts differ by one row, and reading one as
the other shifts every direction by a layer without any error, so these tests pin the mapping."""

from __future__ import annotations

import pytest
import torch

from anchor.hooks import hook_name
from probes.directions import DirectionStack

N_LAYERS, D = 4, 8


def stack() -> DirectionStack:
    torch.manual_seed(0)
    return DirectionStack(list(range(N_LAYERS)), torch.randn(N_LAYERS, D), {"what": "test"})


def by_hook(s: DirectionStack) -> dict[str, torch.Tensor]:
    return {hook_name(layer): s.at(layer) for layer in s.layers}


@pytest.mark.parametrize(
    "embedding_row, rows, layout",
    [(True, N_LAYERS + 1, "persona_vectors"), (False, N_LAYERS, "assistant_axis")],
)
def test_export_then_import_recovers_the_layer_map(tmp_path, embedding_row, rows, layout):
    original = stack()
    path = original.export_pt(tmp_path / "vec.pt", N_LAYERS, with_embedding_row=embedding_row)
    raw = torch.load(path, weights_only=True)
    assert list(raw.shape) == [rows, D]
    loaded = DirectionStack.load(path, n_layers=N_LAYERS)
    assert loaded.layers == original.layers
    assert loaded.meta["layout"] == layout
    for name, vector in by_hook(original).items():
        assert torch.equal(by_hook(loaded)[name], vector)


def test_embedding_row_is_zeros_and_block_outputs_follow(tmp_path):
    original = stack()
    raw = torch.load(original.export_pt(tmp_path / "pv.pt", N_LAYERS, True), weights_only=True)
    assert torch.equal(raw[0], torch.zeros(D))
    assert torch.equal(raw[1], original.at(0))  # hidden_states[1] is block 0's output


def test_persona_vectors_rows_map_to_the_previous_block(tmp_path):
    # Row i holds the value i, so the layer each row lands on is visible.
    rows = torch.arange(N_LAYERS + 1, dtype=torch.float32)[:, None].expand(-1, D).contiguous()
    torch.save(rows, tmp_path / "pv.pt")
    loaded = DirectionStack.load(tmp_path / "pv.pt", n_layers=N_LAYERS)
    assert loaded.layers == [0, 1, 2, 3]
    assert [float(loaded.at(layer)[0]) for layer in loaded.layers] == [1.0, 2.0, 3.0, 4.0]


def test_assistant_axis_rows_map_to_the_same_block(tmp_path):
    rows = torch.arange(N_LAYERS, dtype=torch.float32)[:, None].expand(-1, D).contiguous()
    torch.save(rows, tmp_path / "aa.pt")
    loaded = DirectionStack.load(tmp_path / "aa.pt", n_layers=N_LAYERS)
    assert [float(loaded.at(layer)[0]) for layer in loaded.layers] == [0.0, 1.0, 2.0, 3.0]


def test_mismatching_shape_names_the_file_and_the_shapes(tmp_path):
    path = tmp_path / "wrong_depth.pt"
    torch.save(torch.zeros(7, D), path)
    with pytest.raises(ValueError, match=r"wrong_depth\.pt.*\[7, 8\].*\[5, d_model\].*\[4, d_model\]"):
        DirectionStack.load(path, n_layers=N_LAYERS)


def test_not_a_matrix_names_the_file(tmp_path):
    path = tmp_path / "flat.pt"
    torch.save(torch.zeros(D), path)
    with pytest.raises(ValueError, match=r"flat\.pt.*\[8\]"):
        DirectionStack.load(path, n_layers=N_LAYERS)


def test_without_depth_rows_are_layers_and_meta_says_it_was_assumed(tmp_path):
    torch.save(torch.randn(N_LAYERS + 1, D), tmp_path / "x.pt")
    loaded = DirectionStack.load(tmp_path / "x.pt")
    assert loaded.layers == list(range(N_LAYERS + 1))
    assert loaded.meta["alignment"].startswith("assumed")


def test_export_needs_every_layer(tmp_path):
    partial = DirectionStack([0, 2], torch.randn(2, D))
    with pytest.raises(ValueError, match=r"lacks layers \[1, 3\]"):
        partial.export_pt(tmp_path / "p.pt", N_LAYERS, with_embedding_row=False)
    assert not (tmp_path / "p.pt").exists()


def test_safetensors_stack_checked_against_depth(tmp_path):
    path = DirectionStack([0, 5], torch.randn(2, D)).save(tmp_path / "d.safetensors")
    assert DirectionStack.load(path).layers == [0, 5]
    with pytest.raises(ValueError, match=r"d\.safetensors.*4-layer"):
        DirectionStack.load(path, n_layers=N_LAYERS)
