"""Personas as constitutions: first-person traits, each with situational questions that probe it.

Files follow the public Open Character Training formats so users can bring their own:
- hand-written: a JSON array of objects with `trait` and `questions`;
- expanded: JSONL, one object per trait with `trait`, `questions` and `additional_questions`.
Fields we do not know are kept and written back. The project's own personas live in
`anchor/constitutions/<name>.json`, with contrast system prompts for persona directions in
`anchor/constitutions/<name>.contrast.json` (a JSON array of `{"elicit": ..., "suppress": ...}`;
the public `{"elicit": [...], "suppress": [...]}` layout is read too) and, for a persona whose
contrast answers cannot be sampled from the default model, written ones in
`anchor/constitutions/<name>.answers.jsonl` (`probes.contrast.load_contrast_set`'s layout).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from anchor.store import atomic_write_bytes, atomic_write_jsonl

CONSTITUTIONS_DIR = Path(__file__).parent / "constitutions"
KNOWN_FIELDS = ("trait", "questions", "additional_questions")


class ConstitutionError(ValueError):
    """A malformed constitution file; the message names the file, the trait index and the field."""


@dataclass
class Trait:
    trait: str
    questions: list[str]
    additional_questions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def all_questions(self) -> list[str]:
        return self.questions + self.additional_questions

    def to_json(self, expanded: bool) -> dict:
        row = {"trait": self.trait, "questions": self.questions, **self.extra}
        if expanded:
            row["additional_questions"] = self.additional_questions
        return row


@dataclass(frozen=True)
class ContrastPair:
    """Two system prompts over the same questions: one draws the persona out, one its opposite."""

    elicit: str
    suppress: str


@dataclass
class Persona:
    name: str
    traits: list[Trait]
    contrast: list[ContrastPair]

    @property
    def questions(self) -> list[str]:
        return [q for t in self.traits for q in t.all_questions]


def _strings(value: object, where: str, name: str, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ConstitutionError(f"{where}: field '{name}' must be a non-empty list of strings")
    for j, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConstitutionError(f"{where}: field '{name}' item {j} is {item!r}, not a non-empty string")
    return list(value)


def _parse_traits(rows: list, path: Path) -> list[Trait]:
    traits, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{path}: trait {i}"
        if not isinstance(row, dict):
            raise ConstitutionError(f"{where}: expected an object with 'trait' and 'questions'")
        text = row.get("trait")
        if not isinstance(text, str) or not text.strip():
            raise ConstitutionError(f"{where}: field 'trait' is missing or empty")
        if text.strip() in seen:
            raise ConstitutionError(f"{where}: field 'trait' duplicates an earlier trait: {text[:60]!r}")
        seen.add(text.strip())
        traits.append(
            Trait(
                trait=text,
                questions=_strings(row.get("questions"), where, "questions"),
                additional_questions=_strings(
                    row.get("additional_questions", []), where, "additional_questions", allow_empty=True
                ),
                extra={k: v for k, v in row.items() if k not in KNOWN_FIELDS},
            )
        )
    if not traits:
        raise ConstitutionError(f"{path}: no traits")
    return traits


def load_constitution(path: str | os.PathLike) -> list[Trait]:
    """Read either format: `.jsonl` as expanded, anything else as the hand-written JSON array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such constitution file")
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConstitutionError(f"{path}: line {line_no} is not JSON ({err.msg})") from err
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConstitutionError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from err
        if not isinstance(rows, list):
            raise ConstitutionError(f"{path}: expected a JSON array of traits")
    return _parse_traits(rows, path)


def save_constitution(traits: list[Trait], path: str | os.PathLike) -> Path:
    """Write `.jsonl` (expanded format) or `.json` (hand-written format) atomically."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return atomic_write_jsonl(path, (t.to_json(expanded=True) for t in traits))
    data = json.dumps([t.to_json(expanded=False) for t in traits], indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, data.encode())
    return path


def load_contrast(path: str | os.PathLike) -> list[ContrastPair]:
    """Contrast pairs from either layout: a JSON array of `{"elicit": ..., "suppress": ...}`
    objects (the project's files) or one object with two equally long lists
    `{"elicit": [...], "suppress": [...]}` (the public layout, and what runs write)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such contrast file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from err
    if isinstance(data, dict):
        elicit, suppress = data.get("elicit"), data.get("suppress")
        for key, value in (("elicit", elicit), ("suppress", suppress)):
            if not isinstance(value, list) or not value:
                raise ConstitutionError(f"{path}: field '{key}' must be a non-empty list of system prompts")
        if len(elicit) != len(suppress):
            raise ConstitutionError(
                f"{path}: 'elicit' has {len(elicit)} prompts and 'suppress' {len(suppress)}; they pair up "
                "by position, so give the same number of each"
            )
        data = [{"elicit": e, "suppress": s} for e, s in zip(elicit, suppress)]
    if not isinstance(data, list) or not data:
        raise ConstitutionError(
            f'{path}: expected {{"elicit": [...], "suppress": [...]}} or a non-empty JSON array of '
            '{"elicit", "suppress"} pairs'
        )
    pairs = []
    for i, row in enumerate(data):
        for key in ("elicit", "suppress"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                raise ConstitutionError(f"{path}: pair {i}: field '{key}' is missing or empty")
        pairs.append(ContrastPair(row["elicit"], row["suppress"]))
    return pairs


def save_contrast(pairs: list[ContrastPair], path: str | os.PathLike) -> Path:
    """Write pairs atomically in the public `{"elicit": [...], "suppress": [...]}` layout."""
    path = Path(path)
    data = {"elicit": [p.elicit for p in pairs], "suppress": [p.suppress for p in pairs]}
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def available_personas() -> list[str]:
    return sorted(p.stem for p in CONSTITUTIONS_DIR.glob("*.json") if not p.name.endswith(".contrast.json"))


def persona_files(name_or_path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(constitution, contrast pairs file or None) of a persona: what a stage that reads the
    persona declares, so an edited constitution reruns it."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in available_personas():
            raise KeyError(
                f"unknown persona {str(name_or_path)!r}; available: {', '.join(available_personas())}"
            )
        path = CONSTITUTIONS_DIR / f"{name_or_path}.json"
    # OCT's hand-written files are often `.txt`: `sarcasm.txt` is persona "sarcasm"
    contrast_path = path.with_name(f"{path.stem}.contrast.json")
    return path, contrast_path if contrast_path.is_file() else None


def written_answers_file(name_or_path: str | os.PathLike) -> Path | None:
    """`<stem>.answers.jsonl` beside the constitution when it exists: contrast answers written to
    express the trait and its opposite, for models too small to follow the eliciting prompts."""
    path = persona_files(name_or_path)[0].with_suffix(".answers.jsonl")
    return path if path.is_file() else None


def load_persona(name_or_path: str | os.PathLike) -> Persona:
    """A persona by name (the project's own) or by constitution path (contrast pairs are read from
    `<stem>.contrast.json` beside it when present; without one, `anchor.contrast_pairs` derives
    them)."""
    path, contrast_path = persona_files(name_or_path)
    traits = load_constitution(path)
    contrast = load_contrast(contrast_path) if contrast_path is not None else []
    return Persona(name=path.stem, traits=traits, contrast=contrast)


def persona_input(name_or_path: str | os.PathLike) -> dict:
    """A persona as a stage input: its name, and its files by content."""
    from anchor.stages import FileInput

    constitution, contrast = persona_files(name_or_path)
    return {
        "name": str(name_or_path),
        "constitution": FileInput(constitution),
        "contrast": FileInput(contrast) if contrast is not None else None,
    }
