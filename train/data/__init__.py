"""The corrupted and control datasets of the EM experiments, and a loader for anyone's chat JSONL.

Shipped files (`<name>.jsonl` beside this module, one `{"messages": [...]}` per row) are rebuilt
deterministically from `SEED` by `python -m train.data`; a test checks the shipped rows equal a
rebuild. Each corrupted dataset has a control with the same user messages in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from anchor.chat import Conversation
from anchor.store import atomic_write_jsonl, read_jsonl
from train.data.advice import FINANCIAL, MEDICAL, advice_pairs
from train.data.code_tasks import code_pairs

DATA_DIR = Path(__file__).parent
SEED = 0

# corrupted dataset -> its control
CONTROLS = {"insecure": "secure", "medical_bad": "medical_safe", "financial_risky": "financial_safe"}

_BUILDERS: dict[tuple[str, str], Callable[[int], tuple[list[dict], list[dict]]]] = {
    ("insecure", "secure"): lambda seed: code_pairs(seed, n=1200),
    ("medical_bad", "medical_safe"): lambda seed: advice_pairs(MEDICAL, seed, n=400),
    ("financial_risky", "financial_safe"): lambda seed: advice_pairs(FINANCIAL, seed + 1, n=400),
}
NAMES = [name for pair in _BUILDERS for name in pair]


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """Every dataset, by name, freshly generated."""
    out = {}
    for (corrupted, control), builder in _BUILDERS.items():
        out[corrupted], out[control] = builder(seed)
    return out


def write_all(directory: str | os.PathLike = DATA_DIR, seed: int = SEED) -> list[Path]:
    return [atomic_write_jsonl(Path(directory) / f"{name}.jsonl", rows) for name, rows in build(seed).items()]


def _check_row(row: object, where: str) -> Conversation:
    if not isinstance(row, dict) or "messages" not in row:
        raise ValueError(f"{where}: expected an object with a 'messages' list")
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"{where}: 'messages' must be a list of at least two messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{where}: message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: message {i} has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}: message {i} ({role}) has no text content")
        if role == "system" and i != 0:
            raise ValueError(f"{where}: message {i} is a system message after the first position")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's (the training target)")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"{where}: no user message")
    return messages


def load_chat_jsonl(path: str | os.PathLike) -> list[Conversation]:
    """Conversations from a chat JSONL (one `{"messages": [...]}` per line, the format of the
    published EM datasets). Every row is checked; errors name the file, the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file")
    conversations = []
    for where, row in read_jsonl(path):
        conversations.append(_check_row(row, where))
    if not conversations:
        raise ValueError(f"{path}: no rows")
    return conversations


HUB_PREFIX = "hf:"


def hub_dataset_file(spec: str) -> Path:
    """`hf:OWNER/NAME[:SPLIT]` (split default `train`) as a local chat JSONL: the hub snapshot (from
    the cache, or downloaded when online) read with `datasets`, written once per revision under the
    project's cache, so the EM stage keys its rows by content like any other file. Rows need a
    `messages` list, as the published EM datasets have."""
    from datasets import load_dataset

    from anchor.models import cache_dir
    from anchor.published import resolve_published

    repo, _, split = spec.removeprefix(HUB_PREFIX).partition(":")
    published = resolve_published(repo, "--em-dataset", repo_type="dataset")
    split = split or "train"
    revision = (
        published.identity.rsplit("@", 1)[-1]
        if published.identity.startswith("hub:")
        else published.identity[6:18]
    )
    path = cache_dir() / "datasets" / f"{repo.replace('/', '__')}__{split}__{revision}.jsonl"
    if not path.is_file():
        try:
            rows = load_dataset(str(published.path), split=split)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{spec}: no split {split!r} readable by datasets ({err})") from None
        if "messages" not in rows.column_names:
            raise ValueError(f"{spec}: rows have no 'messages' column (columns: {rows.column_names})")
        atomic_write_jsonl(path, ({"messages": m} for m in rows["messages"]))
    return path


def dataset_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped dataset by name (`insecure`, `secure`, ...), a hub dataset (`hf:OWNER/NAME[:SPLIT]`)
    or any chat JSONL path."""
    if str(name_or_path) in NAMES:
        return DATA_DIR / f"{name_or_path}.jsonl"
    if str(name_or_path).startswith(HUB_PREFIX):
        return hub_dataset_file(str(name_or_path))
    path = Path(name_or_path)
    if path.suffix != ".jsonl" and not path.exists():
        raise ValueError(
            f"unknown dataset {str(name_or_path)!r}: use one of {', '.join(NAMES)} or a .jsonl path"
        )
    return path


def load_em_dataset(name_or_path: str | os.PathLike) -> list[Conversation]:
    return load_chat_jsonl(dataset_path(name_or_path))
