"""Vectors out: a finished main-job run's directions in the formats other tools read, each with a
card that says what it is, plus the run's activations as parquet.

For each direction (`persona`, `misalignment`, and `assistant_axis` when the run read one) the
export writes, into one folder:

- `<name>.pt`: a bare float32 tensor `[n_layers + 1, d_model]` in the Persona Vectors layout (row 0
  the embeddings, row l + 1 the output of block l, `blocks.{l}.hook_resid_post`). This project reads
  only block outputs, so row 0 is zeros, and so is every layer the run did not read: the card lists
  the rows that hold data (a bare tensor cannot say it).
- `<name>.safetensors`: one `[d_model]` tensor per layer read, keyed by TransformerLens hook name
  (`blocks.{l}.hook_resid_post`); the keys name the layers, so nothing is padded.
- `<name>.gguf`: a llama.cpp control vector (`--control-vector`): `direction.{l + 1}` float32
  `[d_model]` for `blocks.{l}.hook_resid_post`, the numbering repeng and llama.cpp's cvector-generator
  give a vector read at that block; metadata `general.architecture = "controlvector"`,
  `controlvector.model_hint` and `controlvector.layer_count` (the number of direction tensors).
  llama.cpp itself reads only the tensors: it adds `direction.N` to the output of block N, one block
  after the one the vector was read at, and has no slot for block 0's input or the last block.
- `<name>.card.json`: model, layers, the rows/tensors with data, how the direction was read (its own
  metadata), the run's identity (its config.json and the sha256 of the source file), norms per layer.

Activations (`activations/`): every finished stage's `ActivationStore` under the run, one parquet
file per store entry at `activations/<stage>/<entry>.parquet` (`<stage>` the stage folder relative
to the run, e.g. `em_persona/em`; `<entry>` the store's entry name, e.g.
`em/step-00040/persona_contrast`), with `activations/index.json` listing them. A row is one read:

    stage, entry, id, token, read, prompt_hash : str, str, str, int|null, str, str
    meta                                        : str (the entry's metadata as JSON)
    blocks.{l}.hook_resid_post                  : fixed-size list of float32 [d_model], one column per layer

`token` is the token's position within its conversation for `all_tokens` reads and null for pooled
reads (`response_mean`, `prompt_last`), whose one row per conversation is what `id` names. Entries of
one stage that share layers load as one dataset:
`datasets.Dataset.from_parquet([...files of the stage...])`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from gguf import GGUFReader, GGUFWriter
from safetensors.torch import save as safetensors_bytes
from transformers import AutoConfig

from anchor.extract import Activations
from anchor.hooks import hook_name
from anchor.inputs import InputError
from anchor.models import (
    DEFAULT_CACHE_NAME,
    DEFAULT_SPEC,
    cache_dir,
    default_gguf_path,
    model_depth,
    resolve_spec,
)
from anchor.stages import SUPERSEDED, sha256_file
from anchor.store import MANIFEST, ActivationStore, atomic_write_bytes, atomic_write_json
from probes.directions import METHODS, Directions, DirectionStack

# Where a finished main-job run keeps each direction (analysis/experiments/track.py's layout), and
# the stage whose done.json says it is finished.
PERSONA_FILE = Path("analysis") / "directions.safetensors"
MISALIGNMENT_FILE = Path("misalignment") / "direction.safetensors"
AXIS_FILE = Path("assistant_axis") / "axis.safetensors"
ACTIVATIONS = "activations"
INDEX = "index.json"
CARD_VERSION = 1

T = TypeVar("T")


@dataclass(frozen=True)
class RunDirection:
    """One direction of a run, as read: the vectors, the file they came from and how they were made."""

    name: str
    stack: DirectionStack  # layers and [L, d] vectors; meta is the direction's own metadata
    source: Path
    sha256: str  # of the bytes the vectors were loaded from
    read: dict  # how it was read: the method, the direction's metadata, any fit statistics
    stage: dict  # the producing stage's identity (done.json's key and run id)


def read_run_config(run: Path) -> dict:
    """The run's config.json, raw: it is the run's identity on every card, and its `model` names
    the model whose depth and architecture the formats need."""
    path = run / "config.json"
    if not run.is_dir():
        raise InputError(f"--run {str(run)!r}: no such directory; give a finished track_drift.py run")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--run {str(run)!r}: no config.json; give a track_drift.py run directory") from None
    except ValueError as err:
        raise InputError(f"{path}: not JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise InputError(f"{path}: has no 'model' field, so it is not a track_drift.py config")
    return config


def _finished_stage(run: Path, file: Path, what: str) -> dict:
    """The identity of the stage that wrote `file`; a stage folder without done.json is the debris of
    an interrupted attempt (`anchor.stages`), so its files are not trusted."""
    path = run / file
    if not path.is_file():
        raise InputError(f"{path}: no such file; the run has no {what} (has its {file.parts[0]}/ stage run?)")
    marker = path.parent / "done.json"
    if not marker.is_file():
        raise InputError(
            f"{marker}: no such file; the {file.parts[0]}/ stage did not finish, so {path.name} is not "
            "final (rerun track_drift.py on the run to finish it)"
        )
    done = json.loads(marker.read_text())
    return {"folder": file.parts[0], "key": done.get("key"), "run_id": done.get("run_id")}


def _load_checked(path: Path, load: Callable[[Path], T]) -> tuple[T, str]:
    """`load(path)` and the sha256 of the file it read: hashed before and after, so the card's hash
    is certainly that of the vectors exported (a job rewriting the file meanwhile fails here)."""
    before = sha256_file(path)
    try:
        value = load(path)
    except ValueError as err:
        raise InputError(str(err)) from None
    if sha256_file(path) != before:
        raise InputError(f"{path}: changed while it was read; export again when the run is idle")
    return value, before


def run_directions(run: Path, persona_method: str = "diff_in_means") -> list[RunDirection]:
    """The run's persona and misalignment directions, and its assistant axis if it read one. The
    persona direction is one of the `Directions` methods: diff-in-means by default, the unnormalised
    persona vector that Persona Vectors publishes."""
    if persona_method not in METHODS:
        raise InputError(f"--persona-method {persona_method!r}: choose one of {', '.join(METHODS)}")
    out = []
    stage = _finished_stage(run, PERSONA_FILE, "persona directions")
    directions, sha = _load_checked(run / PERSONA_FILE, Directions.load)
    vectors = {
        "diff_in_means": directions.diff_in_means,
        "pca": directions.pca,
        "probe": directions.probe.weights,
    }[persona_method]
    read = {
        "method": persona_method,
        "meta": directions.meta,
        "probe_accuracy": directions.probe.accuracy,
        "probe_auroc": directions.probe.auroc,
        "best_layer": directions.best_layer(),
    }
    stack = DirectionStack(list(directions.layers), vectors.float(), directions.meta)
    out.append(RunDirection("persona", stack, run / PERSONA_FILE, sha, read, stage))
    for name, file, what in (
        ("misalignment", MISALIGNMENT_FILE, "misalignment direction"),
        ("assistant_axis", AXIS_FILE, "assistant axis"),
    ):
        if name == "assistant_axis" and not (run / file).is_file():
            continue  # read only with --monitor
        stage = _finished_stage(run, file, what)
        stack, sha = _load_checked(run / file, DirectionStack.load)
        out.append(RunDirection(name, stack, run / file, sha, {"meta": stack.meta}, stage))
    return out


def model_facts(spec: str) -> tuple[int, str]:
    """(number of blocks, architecture name) of a model spec from its config alone, no weights.
    The `.pt` layout needs the depth (a bare tensor names layers only by row), and the GGUF's
    model hint is the architecture name (transformers' `model_type`, what repeng writes there)."""
    depth = model_depth(spec)
    if spec == DEFAULT_SPEC and not (cache_dir() / DEFAULT_CACHE_NAME / "config.json").is_file():
        field = GGUFReader(default_gguf_path()).fields["general.architecture"]
        return depth, str(field.contents())
    return depth, str(AutoConfig.from_pretrained(resolve_spec(spec)).model_type)


def check_layers(direction: RunDirection, n_layers: int) -> None:
    """Every layer the direction has must be a block of an `n_layers`-deep model, and its vectors
    finite: a wrong depth shifts the `.pt` rows silently, and a NaN steers everything to NaN."""
    stack = direction.stack
    if n_layers < 1:
        raise InputError(f"--n-layers {n_layers}: must be 1 or more")
    outside = [layer for layer in stack.layers if not 0 <= layer < n_layers]
    if outside:
        raise InputError(
            f"{direction.source}: layers {outside} do not fit a {n_layers}-layer model (--n-layers); "
            "is the depth that of the run's model?"
        )
    if stack.vectors.ndim != 2 or stack.vectors.shape[0] != len(stack.layers):
        raise InputError(f"{direction.source}: vectors {list(stack.vectors.shape)} for layers {stack.layers}")
    if not torch.isfinite(stack.vectors).all():
        raise InputError(f"{direction.source}: the direction has non-finite values")


def pt_rows(stack: DirectionStack, n_layers: int) -> torch.Tensor:
    """`[n_layers + 1, d]` float32, Persona Vectors' layout: row l + 1 is layer l, and row 0 (the
    embeddings) and every layer not read are zeros, which steer nothing if a consumer uses them."""
    rows = torch.zeros(n_layers + 1, stack.vectors.shape[-1], dtype=torch.float32)
    for i, layer in enumerate(stack.layers):
        rows[layer + 1] = stack.vectors[i].float()
    return rows


def write_pt(stack: DirectionStack, path: Path, n_layers: int) -> Path:
    buffer = io.BytesIO()
    torch.save(pt_rows(stack, n_layers).contiguous(), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_safetensors(stack: DirectionStack, path: Path, header: dict[str, str]) -> Path:
    """One tensor per layer read, keyed by hook name: the key, not a position, says the layer."""
    tensors = {
        hook_name(layer): stack.vectors[i].float().contiguous() for i, layer in enumerate(stack.layers)
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))
    return path


def gguf_tensor_name(layer: int) -> str:
    """A vector read at `blocks.{layer}.hook_resid_post` as a control-vector tensor: repeng and
    cvector-generator number it layer + 1 (its `hidden_states` index), and llama.cpp refuses 0."""
    return f"direction.{layer + 1}"


def write_gguf(stack: DirectionStack, path: Path, model_hint: str, name: str) -> Path:
    """A llama.cpp control vector, written by gguf's own writer to a scratch file (it wants a path)
    and then moved into place atomically, so a reader never sees half a GGUF."""
    with tempfile.TemporaryDirectory(prefix=".gguf-") as scratch:
        tmp = Path(scratch) / "vector.gguf"
        writer = GGUFWriter(tmp, "controlvector")  # sets general.architecture
        writer.add_name(name)
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(stack.layers))
        for i, layer in enumerate(stack.layers):
            vector = stack.vectors[i].detach().float().cpu().numpy().astype(np.float32)
            writer.add_tensor(gguf_tensor_name(layer), vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        atomic_write_bytes(path, tmp.read_bytes())
    return path


def direction_card(
    direction: RunDirection,
    run: Path,
    config: dict,
    n_layers: int,
    model_hint: str,
    files: dict[str, str],
) -> dict:
    """What a consumer needs to use the vectors without this project: the model, which rows and
    tensors hold data, how the direction was read and from which run, and its norm per layer."""
    stack = direction.stack
    norms = stack.vectors.double().norm(dim=-1).tolist()
    config_path = run / "config.json"
    return {
        "card_version": CARD_VERSION,
        "name": direction.name,
        "model": stack.meta.get("model", config.get("model")),
        "run_model": config.get("model"),
        "model_hint": model_hint,
        "n_layers": n_layers,
        "d_model": int(stack.vectors.shape[-1]),
        "layers": list(stack.layers),
        "hook_point": "resid_post: the output of block l (TransformerLens blocks.{l}.hook_resid_post)",
        "files": files,
        "formats": {
            "pt": {
                "shape": [n_layers + 1, int(stack.vectors.shape[-1])],
                "layout": "Persona Vectors: row 0 the embeddings, row l + 1 the output of block l",
                "rows_with_data": [layer + 1 for layer in stack.layers],
                "zero_rows": "row 0 and every layer not read (this project reads block outputs only)",
            },
            "safetensors": {
                "keys": [hook_name(layer) for layer in stack.layers],
                "shape": [stack.vectors.shape[-1]],
            },
            "gguf": {
                "tensors": [gguf_tensor_name(layer) for layer in stack.layers],
                "metadata": {
                    "general.architecture": "controlvector",
                    "controlvector.model_hint": model_hint,
                    "controlvector.layer_count": len(stack.layers),
                },
                "applied_at": "llama.cpp adds direction.N to the output of block N, one block after the "
                "block it was read at (direction.N = blocks.{N-1}.hook_resid_post), as for repeng and "
                "cvector-generator vectors; it has no slot for the last block, so "
                f"direction.{n_layers} is loaded but not applied",
            },
        },
        "read": {"source": str(direction.source.relative_to(run)), **direction.read},
        "run": {
            "path": str(run.resolve()),
            "config": config,
            "config_sha256": sha256_file(config_path),
            "source_sha256": direction.sha256,
            "stage": direction.stage,
        },
        "norms": [
            {
                "layer": layer,
                "hook": hook_name(layer),
                "pt_row": layer + 1,
                "gguf": gguf_tensor_name(layer),
                "norm": n,
            }
            for layer, n in zip(stack.layers, norms)
        ],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def export_direction(
    direction: RunDirection, run: Path, config: dict, out: Path, n_layers: int, model_hint: str
) -> dict[str, Path]:
    """Write one direction in every format, and its card last (a card means the set is complete)."""
    check_layers(direction, n_layers)
    stack, name = direction.stack, direction.name
    header = {
        "model": str(stack.meta.get("model", config.get("model"))),
        "layers": json.dumps(stack.layers),
        "hook_point": "resid_post",
        "card": f"{name}.card.json",
    }
    paths = {
        "pt": write_pt(stack, out / f"{name}.pt", n_layers),
        "safetensors": write_safetensors(stack, out / f"{name}.safetensors", header),
        "gguf": write_gguf(stack, out / f"{name}.gguf", model_hint, name),
    }
    card = direction_card(direction, run, config, n_layers, model_hint, {k: p.name for k, p in paths.items()})
    paths["card"] = out / f"{name}.card.json"
    atomic_write_json(paths["card"], card)
    return paths


def activation_stores(run: Path) -> list[tuple[str, ActivationStore, bool]]:
    """(stage, store, finished) for every activation store under the run (a stage keeps one at
    `<stage>/activations`, `anchor.runs`), by the stage folder relative to the run; copies set aside
    under superseded/ are not the run's current results and are left out."""
    stores = []
    for manifest in sorted(run.rglob(f"{ACTIVATIONS}/{MANIFEST}")):
        stage = manifest.parent.parent
        relative = stage.relative_to(run)
        if not relative.parts or relative.parts[0] == SUPERSEDED:
            continue
        stores.append(
            (relative.as_posix(), ActivationStore(manifest.parent), (stage / "done.json").is_file())
        )
    return stores


def activation_bytes(run: Path) -> int:
    """The float32 size of every finished store's activations: what the parquet files will hold."""
    total = 0
    for _, store, finished in activation_stores(run):
        if finished:
            entries = json.loads(store.manifest_path.read_text())["entries"]
            total += sum(4 * math.prod(entry["shape"]) for entry in entries.values())
    return total


def activation_table(acts: Activations, stage: str, entry: str, meta: dict):
    """One entry's reads as an arrow table (the module docstring's schema). Each layer's column is
    built from the tensor's memory, not Python floats, so a large entry costs about its own size."""
    n, _, d = acts.tensor.shape
    if acts.lengths is None:
        ids, tokens = list(acts.ids), pa.nulls(n, pa.int32())
    else:
        ids = [i for i, length in zip(acts.ids, acts.lengths) for _ in range(length)]
        tokens = pa.array([t for length in acts.lengths for t in range(length)], pa.int32())
    constant = {
        "stage": stage,
        "entry": entry,
        "read": acts.read,
        "prompt_hash": acts.prompt_hash,
        "meta": json.dumps(meta, sort_keys=True),
    }
    columns: dict[str, Any] = {
        "stage": pa.array([stage] * n, pa.string()),
        "entry": pa.array([entry] * n, pa.string()),
        "id": pa.array(ids, pa.string()),
        "token": tokens,
        "read": pa.array([acts.read] * n, pa.string()),
        "prompt_hash": pa.array([acts.prompt_hash] * n, pa.string()),
        "meta": pa.array([constant["meta"]] * n, pa.string()),
    }
    for i, layer in enumerate(acts.layers):
        flat = acts.tensor[:, i, :].contiguous().float().numpy().reshape(-1)
        columns[hook_name(layer)] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d)
    table = pa.table(columns)
    info = {**constant, "layers": acts.layers, "d_model": d, "meta": meta}
    return table.replace_schema_metadata({"identity_anchor": json.dumps(info)})


def export_activations(run: Path, out: Path, log: Callable[[str], None] = print) -> Path:
    """Every finished stage's activations as parquet under `out/activations/`, and the index; a
    store whose stage has no done.json is an interrupted attempt and is listed as skipped."""
    root = out / ACTIVATIONS
    entries, skipped = [], []
    for stage, store, finished in activation_stores(run):
        if not finished:
            skipped.append(
                {"stage": stage, "reason": f"{run / stage}/done.json missing: the stage did not finish"}
            )
            continue
        for name in store.list():
            acts, meta = store.load(name), store.meta(name)
            path = root / stage / f"{name}.parquet"
            table = activation_table(acts, stage, name, meta)
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            atomic_write_bytes(path, buffer.getvalue())
            entries.append(
                {
                    "stage": stage,
                    "entry": name,
                    "file": path.relative_to(root).as_posix(),
                    "rows": table.num_rows,
                    "layers": acts.layers,
                    "d_model": int(acts.tensor.shape[-1]),
                    "read": acts.read,
                    "prompt_hash": acts.prompt_hash,
                    "meta": meta,
                    "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                }
            )
            log(f"  activations {stage}: {name} ({table.num_rows} rows)")
    index = {
        "version": CARD_VERSION,
        "run": str(run.resolve()),
        "schema": "one row per read: stage, entry, id, token (position for all_tokens reads, else null), "
        "read, prompt_hash, meta (JSON); one column per layer, blocks.{l}.hook_resid_post, a float32 "
        "list of d_model values",
        "entries": entries,
        "skipped": skipped,
    }
    atomic_write_json(root / INDEX, index)
    return root / INDEX


def export_run(
    run: str | Path,
    out: str | Path,
    n_layers: int,
    model_hint: str,
    activations: bool = True,
    persona_method: str = "diff_in_means",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export a finished run: every direction in every format with its card, and (by default) the
    activations. Everything is read and checked before the first file is written."""
    run, out = Path(run), Path(out)
    config = read_run_config(run)
    directions = run_directions(run, persona_method)
    for direction in directions:
        check_layers(direction, n_layers)
    written: dict[str, Any] = {
        d.name: export_direction(d, run, config, out, n_layers, model_hint) for d in directions
    }
    if activations:
        written["activations"] = export_activations(run, out, log)
    return written
