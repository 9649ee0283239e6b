"""The role set behind the assistant axis: characters the model can be asked to play, each with a
few system-prompt phrasings, and everyday questions that every role (and the model's own default
voice) answers.

Several phrasings per role keep the axis from resting on one instruction's wording; shared
questions keep the role means comparable, so what separates them is the voice, not the topic. The
project's set lives in `anchor/prompts/roles.json` (`{"questions": [...], "roles": [{"name",
"category", "phrasings"}]}`); a file in the same layout can be passed instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROLES_FILE = Path(__file__).parent / "prompts" / "roles.json"


@dataclass(frozen=True)
class Role:
    name: str
    category: str  # profession, fictional, temperament, character
    phrasings: tuple[str, ...]  # system prompts that each ask for this role


def _read(path: str | os.PathLike | None) -> tuple[Path, dict]:
    path = Path(path) if path is not None else ROLES_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a role set ({err})") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected an object with 'questions' and 'roles'")
    return path, doc


def _texts(value: object, where: str) -> tuple[str, ...]:
    """A non-empty list of non-blank strings, or a ValueError saying where it is not."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of strings")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: every entry must be a non-blank string")
    return tuple(value)


def load_roles(path: str | os.PathLike | None = None) -> list[Role]:
    """The roles of a role set (the project's own by default), in file order; names are unique."""
    path, doc = _read(path)
    rows = doc.get("roles")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: 'roles' must be a non-empty list")
    roles: list[Role] = []
    for index, row in enumerate(rows):
        where = f"{path}: role {index}"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not row["name"]:
            raise ValueError(f"{where}: needs a 'name'")
        where = f"{where} ({row['name']})"
        phrasings = _texts(row.get("phrasings"), f"{where}: phrasings")
        roles.append(Role(row["name"], str(row.get("category", "")), phrasings))
    names = [r.name for r in roles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate role names {duplicates}")
    return roles


def shared_questions(path: str | os.PathLike | None = None) -> list[str]:
    """The questions every role, and the default voice, answers."""
    path, doc = _read(path)
    return list(_texts(doc.get("questions"), f"{path}: questions"))
