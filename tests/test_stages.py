"""Stages keyed by their declared inputs, never deleting finished work, and one writer per folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anchor.runlock import HOLDER, RunLocked, run_lock
from anchor.stages import (
    SUPERSEDED,
    Content,
    FileInput,
    Stage,
    StageOutput,
    changed_inputs,
    is_complete,
    read_done,
    run_stage,
)


def write_value(inputs, folder: Path) -> dict:
    (folder / "value.txt").write_text(f"{inputs.value}:{inputs.get('extra')}")
    return {"wrote": inputs.value}


def copy_file(inputs, folder: Path) -> dict:
    (folder / "copy.txt").write_text(inputs.source.read_text())
    return {}


def read_upstream(inputs, folder: Path) -> dict:
    (folder / "seen.txt").write_text((inputs.upstream / "value.txt").read_text())
    return {}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_reruns_when_an_input_changes_and_keeps_the_finished_one(tmp_path):
    log: list[str] = []
    first = run_stage(Stage(tmp_path, "a/b", {"value": 1, "extra": "x"}, write_value), log.append)
    assert log == ["stage a/b: running"] and first["inputs"] == {"value": 1, "extra": "x"}
    before = tree(tmp_path / "a" / "b")
    assert run_stage(Stage(tmp_path, "a/b", {"value": 1, "extra": "x"}, write_value), log.append) == first
    assert log[-1] == "stage a/b: complete, skipped"

    second = run_stage(Stage(tmp_path, "a/b", {"value": 2, "extra": "x"}, write_value), log.append)
    assert second["key"] != first["key"] and (tmp_path / "a" / "b" / "value.txt").read_text() == "2:x"
    kept = tmp_path / SUPERSEDED / f"a__b@{first['key']}"
    assert tree(kept) == before  # byte for byte, done.json included
    assert (
        "value: 1 -> 2" in log[-2] and str(kept.relative_to(tmp_path)) in log[-2] and "extra" not in log[-2]
    )

    # the old inputs again: the kept stage comes back instead of a rerun; the newer one is kept
    back = run_stage(Stage(tmp_path, "a/b", {"value": 1, "extra": "x"}, write_value), log.append)
    assert back == first and tree(tmp_path / "a" / "b") == before and "restored" in log[-1]
    assert read_done(tmp_path / SUPERSEDED / f"a__b@{second['key']}") == second

    # --overwrite is the one way to discard
    run_stage(Stage(tmp_path, "a/b", {"value": 3, "extra": "x"}, write_value), log.append, overwrite=True)
    assert "discarded" in log[-2] and not (tmp_path / SUPERSEDED / f"a__b@{first['key']}").exists()


def test_an_interrupted_attempt_is_debris_and_is_cleared(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "partial.txt").write_text("half")
    run_stage(Stage(tmp_path, "s", {"value": 1}, write_value), lambda _: None)
    assert not (tmp_path / "s" / "partial.txt").exists() and not (tmp_path / SUPERSEDED).exists()


def test_files_by_content_and_upstream_by_identity(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one")
    copy = Stage(tmp_path, "copy", {"source": FileInput(source)}, copy_file)
    run_stage(copy, lambda _: None)
    assert is_complete(copy)
    source.write_text("two")  # same path, new content
    assert not is_complete(copy)

    up = Stage(tmp_path, "up", {"value": 1}, write_value)
    down = Stage(tmp_path, "down", {"upstream": StageOutput(tmp_path / "up")}, read_upstream)
    assert not is_complete(down)  # the upstream has not run
    run_stage(up, lambda _: None)
    run_stage(down, lambda _: None)
    assert is_complete(down)
    run_stage(up, lambda _: None, overwrite=True)  # complete: skipped, nothing changes downstream
    assert is_complete(down)
    (tmp_path / "up" / "done.json").unlink()  # the upstream redone (a new execution)...
    run_stage(up, lambda _: None)
    assert not is_complete(down)  # ...makes the downstream stale


def test_a_body_sees_only_what_it_declares():
    config = {"value": 1}
    with pytest.raises(TypeError, match="module-level function"):
        Stage(Path("."), "s", {}, lambda inputs, folder: config["value"])

    def nested(inputs, folder):
        return config

    with pytest.raises(TypeError, match="module-level function"):
        Stage(Path("."), "s", {}, nested)
    with pytest.raises(TypeError, match="not a declarable input"):
        run_stage(Stage(Path("."), "s", {"path": Path("x")}, write_value), lambda _: None)
    assert Content([1, 2], "hash").key == "hash"


def test_changed_inputs_names_every_changed_leaf():
    old = {"run": {"max_rows": 8, "seed": 0}, "judge": "hf:a"}
    new = {"run": {"max_rows": 4, "seed": 0}, "judge": "hf:a", "added": True}
    assert changed_inputs(old, new) == ["added: (absent) -> true", "run.max_rows: 8 -> 4"]


HOLD = "import sys, time; from anchor.runlock import run_lock\nwith run_lock(sys.argv[1]):\n    time.sleep(600)\n"


def test_one_writer_per_folder_and_a_killed_holder_does_not_block(tmp_path):
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=root)
    try:
        for _ in range(600):
            if (tmp_path / HOLDER).is_file() and json.loads((tmp_path / HOLDER).read_text())[
                "pid"
            ] == holder.pid:
                break
            time.sleep(0.1)
        with pytest.raises(RunLocked, match=rf"{tmp_path}.*process {holder.pid}"):
            with run_lock(tmp_path):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path):  # the kernel released the dead holder's lock
        with run_lock(tmp_path):  # and this process may take it again inside
            assert json.loads((tmp_path / HOLDER).read_text())["pid"] == os.getpid()
