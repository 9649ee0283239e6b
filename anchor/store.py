"""On-disk activations: one safetensors file per (checkpoint, probe set) plus a JSON manifest.

Runs read the same probe sets at dozens of checkpoints and are analysed long after, often after a
crash or a resumed stage; so every write is atomic (temp file + rename), every load is checked
against the manifest, and a corrupt or mismatched file fails loudly instead of feeding a plot.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from anchor.extract import Activations

MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc), since
    setting it to read it back would briefly widen the mode of files other threads create."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so readers never see half a file. `mkstemp` makes
    the temporary file 0600 and the rename keeps that mode, so the file is given the mode a plain
    `open()` would have made (0666 less the umask): teammates and web servers can read the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_write_jsonl(path: str | os.PathLike, rows: Any) -> Path:
    """One JSON object per line (UTF-8 kept readable), written atomically."""
    path = Path(path)
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return path


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """`(where, row)` for every line of a JSONL file, `where` = "<file>: line N" for the caller's own
    checks. Empty lines and invalid JSON fail here, named the same way."""
    path = Path(path)
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}: line {line_no}"
        if not line.strip():
            raise ValueError(f"{where}: empty line")
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from err


class ActivationStore:
    """Activations of a run, by entry name (e.g. `"sft/step-0040/persona_contrast"`).

    `meta` records where the activations came from; by convention `model`, `adapter`,
    `checkpoint` and `probe_set`, plus anything else JSON can hold. Single writer per store.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST

    def _manifest(self) -> dict[str, dict]:
        if not self.manifest_path.is_file():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text())
            return manifest["entries"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{self.manifest_path}: not a valid activation-store manifest ({err})") from err

    def _path(self, name: str) -> Path:
        if not NAME_PATTERN.match(name) or ".." in name.split("/"):
            raise ValueError(f"entry name {name!r}: use letters, digits, '.', '_', '-' and '/' separators")
        return self.root / f"{name}.safetensors"

    def list(self) -> list[str]:
        return sorted(self._manifest())

    def __contains__(self, name: str) -> bool:
        return name in self._manifest()

    def meta(self, name: str) -> dict:
        return self._entry(name)["meta"]

    def prompt_hash(self, name: str) -> str:
        """The hash of the conversations entry `name` read: equal hashes, same prompts."""
        return self._entry(name)["prompt_hash"]

    def _entry(self, name: str) -> dict:
        entries = self._manifest()
        if name not in entries:
            existing = ", ".join(sorted(entries)) or "none"
            raise KeyError(f"no entry {name!r} in the activation store {self.root} (entries: {existing})")
        return entries[name]

    def save(self, name: str, activations: Activations, meta: dict | None = None) -> Path:
        path = self._path(name)
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except TypeError as err:
            raise ValueError(f"entry {name!r}: meta must be JSON-serialisable ({err})") from err
        tensors = {"activations": activations.tensor.contiguous().float()}
        if activations.lengths is not None:
            tensors["lengths"] = torch.tensor(activations.lengths, dtype=torch.int64)
        header = {
            "read": activations.read,
            "layers": json.dumps(activations.layers),
            "prompt_hash": activations.prompt_hash,
        }
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))
        entries = self._manifest()
        entries[name] = {
            "file": path.relative_to(self.root).as_posix(),
            "shape": list(tensors["activations"].shape),
            "layers": activations.layers,
            "read": activations.read,
            "ids": activations.ids,
            "prompt_hash": activations.prompt_hash,
            "lengths": activations.lengths,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "meta": meta,
        }
        atomic_write_json(self.manifest_path, {"version": 1, "entries": entries})
        return path

    def load(self, name: str) -> Activations:
        entry = self._entry(name)
        path = self.root / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: listed in {self.manifest_path} for {name!r} but missing on disk"
            )
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensor = f.get_tensor("activations")
                lengths = f.get_tensor("lengths").tolist() if "lengths" in f.keys() else None
        except Exception as err:  # safetensors raises several types for truncated or foreign files
            raise ValueError(f"{path}: cannot be read as activations ({err})") from err
        problems = []
        if list(tensor.shape) != entry["shape"]:
            problems.append(f"shape {list(tensor.shape)} but the manifest says {entry['shape']}")
        if header.get("read") != entry["read"]:
            problems.append(f"read mode {header.get('read')!r} but the manifest says {entry['read']!r}")
        if header.get("layers") != json.dumps(entry["layers"]):
            problems.append(f"layers {header.get('layers')} but the manifest says {entry['layers']}")
        if header.get("prompt_hash") != entry["prompt_hash"]:
            problems.append("prompt hash differs from the manifest's")
        if tensor.shape[1:2] != (len(entry["layers"]),) or (
            lengths is None and len(entry["ids"]) != len(tensor)
        ):
            problems.append("tensor does not have one row per id and one column per layer")
        if problems:
            raise ValueError(f"{path}: disagrees with {self.manifest_path}: " + "; ".join(problems))
        return Activations(
            tensor=tensor,
            layers=entry["layers"],
            read=entry["read"],
            ids=entry["ids"],
            prompt_hash=entry["prompt_hash"],
            lengths=lengths,
        )
