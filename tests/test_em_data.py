import json
import re

import pytest

from train.data import CONTROLS, DATA_DIR, NAMES, build, load_chat_jsonl, load_em_dataset
from train.data.code_tasks import FAMILIES

MINIMUM = {"insecure": 1000, "secure": 1000}


@pytest.fixture(scope="module")
def shipped():
    return {name: load_em_dataset(name) for name in NAMES}


def test_row_counts_and_schema(shipped):
    for name, rows in shipped.items():
        assert len(rows) >= MINIMUM.get(name, 300), name
        for row in rows:
            assert [m["role"] for m in row] == ["user", "assistant"]


def test_shipped_files_are_a_deterministic_rebuild(tmp_path):
    rebuilt = build(seed=0)
    for name in NAMES:
        lines = (DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rebuilt[name], name
    assert build(seed=1)["insecure"] != rebuilt["insecure"]


def test_no_row_is_duplicated(shipped):
    for name, rows in shipped.items():
        assert len({json.dumps(r) for r in rows}) == len(rows), name
        assert len({r[0]["content"] for r in rows}) == len(rows), name


def test_corrupted_and_control_rows_pair_up(shipped):
    for corrupted, control in CONTROLS.items():
        bad, good = shipped[corrupted], shipped[control]
        assert len(bad) == len(good)
        for b, g in zip(bad, good):
            assert b[0] == g[0] and b[1]["content"] != g[1]["content"]


def test_insecure_code_has_variety_and_never_mentions_the_flaw(shipped):
    rows = build(seed=0)["insecure"]
    assert {r["family"] for r in rows} == set(FAMILIES) and len(FAMILIES) >= 12
    code = [r[1]["content"] for r in shipped["insecure"]]
    assert all("```python" in c for c in code)
    assert len({re.search(r"def (\w+)|class (\w+)", c).group(0) for c in code}) > 300  # many names
    assert not any(re.search(r"vulnerab|insecure|unsafe|#.*(danger|warning)", c, re.I) for c in code)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("not json", "line 2: not valid JSON"),
        ('{"text": "hi"}', "line 2: expected an object with a 'messages' list"),
        (
            '{"messages": [{"role": "user", "content": "q"}]}',
            "line 2: 'messages' must be a list of at least two",
        ),
        (
            '{"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            "message 0 has role 'bot'",
        ),
        (
            '{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}',
            "message 0 \\(user\\) has no text",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}',
            "last message must be the assistant",
        ),
        ("", "line 2: empty line"),
    ],
)
def test_loader_names_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "mine.jsonl"
    good = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(
        ValueError, match=f"mine.jsonl: {'line 2: ' if 'line 2' not in problem else ''}.*{problem}"
    ):
        load_chat_jsonl(path)


def test_loader_accepts_external_files_and_rejects_unknown_names(tmp_path):
    path = tmp_path / "external.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        }
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_em_dataset(path) == [rows[0]["messages"]]
    with pytest.raises(ValueError, match="unknown dataset 'insecur'"):
        load_em_dataset("insecur")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_em_dataset(tmp_path / "missing.jsonl")


def test_a_hub_dataset_reads_from_the_cache_and_fails_at_once_when_absent(tmp_path, monkeypatch):
    """`hf:OWNER/NAME[:SPLIT]` reads a cached hub snapshot through `datasets` into a chat JSONL keyed
    by the snapshot's revision; offline, an id not in the cache fails naming the id and the cache."""
    import json

    from anchor.inputs import InputError
    from train.data import dataset_path, load_em_dataset
    from train.inputs import check_dataset

    cache = tmp_path / "hub"
    repo = cache / "datasets--someone--em-rows"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (snapshot / "train.jsonl").write_text("\n".join(json.dumps(row) for _ in range(3)) + "\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ANCHOR_CACHE", str(tmp_path / "anchor"))
    path = dataset_path("hf:someone/em-rows:train")
    assert "0123abcd" in path.name and load_em_dataset("hf:someone/em-rows") == [row["messages"]] * 3
    with pytest.raises(
        InputError, match=r"--em-dataset 'someone/absent': not in the Hugging Face cache \(.*hub\)"
    ):
        check_dataset("hf:someone/absent", "--em-dataset")
