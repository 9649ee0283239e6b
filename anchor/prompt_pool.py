"""The generic single-turn prompts that character training mixes with a persona's own questions,
so the persona generalises beyond them (Open Character Training draws about three quarters of its
DPO prompts from LIMA). The project ships its own pool (`prompts/generic_prompts.jsonl`, written
for it: writing, advice, facts, coding, opinions, planning, ...); users may bring theirs, e.g. LIMA,
as JSONL rows with a `prompt` field."""

from __future__ import annotations

import os
from pathlib import Path

from anchor.store import read_jsonl

GENERIC_PROMPTS_FILE = Path(__file__).parent / "prompts" / "generic_prompts.jsonl"


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """The prompts of a JSONL pool (default: the shipped one), in file order, duplicates removed.
    Errors name the file, the line and the problem."""
    path = Path(path) if path is not None else GENERIC_PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file (JSONL rows with a 'prompt' field)")
    prompts = []
    for where, row in read_jsonl(path):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: expected an object with a non-empty string field 'prompt'")
        prompts.append(prompt.strip())
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return list(dict.fromkeys(prompts))
