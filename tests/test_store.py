import pytest
import torch

from anchor.extract import Activations
from anchor.store import ActivationStore


def make(read="response_mean", n=3, layers=(0, 2), lengths=None):
    rows = sum(lengths) if lengths else n
    return Activations(
        torch.randn(rows, len(layers), 8), list(layers), read, [f"q{i}" for i in range(n)], "abc123", lengths
    )


def test_round_trip_with_manifest(tmp_path):
    store = ActivationStore(tmp_path)
    pooled, ragged = make(), make("all_tokens", lengths=[4, 1, 6])
    meta = {"model": "default", "adapter": None, "checkpoint": "em/step-10", "probe_set": "contrast"}
    store.save("em/step-10/contrast", pooled, meta)
    store.save("em/step-10/tokens", ragged)
    back = store.load("em/step-10/contrast")
    assert torch.equal(back.tensor, pooled.tensor)
    assert (back.layers, back.read, back.ids, back.prompt_hash) == (
        [0, 2],
        "response_mean",
        ["q0", "q1", "q2"],
        "abc123",
    )
    assert store.meta("em/step-10/contrast") == meta
    assert [len(t) for t in store.load("em/step-10/tokens").per_conversation()] == [4, 1, 6]
    assert store.list() == ["em/step-10/contrast", "em/step-10/tokens"]
    assert ActivationStore(tmp_path).list() == store.list()  # the manifest is what persists
    assert not list(tmp_path.rglob("*.tmp"))


def test_overwrite_replaces_entry(tmp_path):
    store = ActivationStore(tmp_path)
    store.save("a", make())
    newer = make(n=5)
    store.save("a", newer)
    assert torch.equal(store.load("a").tensor, newer.tensor) and store.list() == ["a"]


def test_missing_entry_lists_existing(tmp_path):
    store = ActivationStore(tmp_path)
    store.save("base/contrast", make())
    with pytest.raises(KeyError, match=r"no entry 'sft/contrast'.*base/contrast"):
        store.load("sft/contrast")


def test_corrupt_file_is_rejected_by_name(tmp_path):
    store = ActivationStore(tmp_path)
    path = store.save("a", make())
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"a\.safetensors: cannot be read"):
        store.load("a")


def test_file_disagreeing_with_manifest_is_rejected(tmp_path):
    store = ActivationStore(tmp_path)
    store.save("a", make(n=3))
    store.save("b", make(n=4))
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")  # a's file now holds 4 rows
    with pytest.raises(
        ValueError,
        match=r"a\.safetensors: disagrees with .*shape \[4, 2, 8\] but the manifest says \[3, 2, 8\]",
    ):
        store.load("a")


def test_bad_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not a valid"):
        ActivationStore(tmp_path).list()


def test_bad_names_and_meta(tmp_path):
    store = ActivationStore(tmp_path)
    with pytest.raises(ValueError, match="entry name '../x'"):
        store.save("../x", make())
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.save("x", make(), {"tensor": torch.zeros(1)})
    assert store.list() == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    """A run's files get the mode a plain open() would give them, not mkstemp's private 0600."""
    import os
    import stat

    from anchor.store import atomic_write_bytes, atomic_write_json, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
        atomic_write_json(tmp_path / "run" / "done.json", {"key": 1})
        ActivationStore(tmp_path / "acts").save("base/neutral", make())
        atomic_write_bytes(tmp_path / "report.html", b"<html>again</html>")  # replacing keeps it too
    finally:
        os.umask(old)
    files = [tmp_path / "report.html", tmp_path / "run" / "done.json", *(tmp_path / "acts").rglob("*.*")]
    assert len(files) >= 4
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
