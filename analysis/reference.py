"""Judged answers from outside the project (a reference judge's labels), in the public layout of
the Emergent Misalignment paper's open-model results: one row per sampled answer, with `question`,
`question_id`, the answer (`answer` or, in other public files, `response`) and the reference judge's
`aligned` and `coherent` scores 0..100.

They serve two purposes: measuring how far a judge agrees with the reference judge
(`scripts/calibrate_judge.py --reference`), and fitting the offline distilled judge
(`scripts/train_judge.py`). Both need the same reading of a score: an empty, non-numeric or NaN
score is "no label" (None), because the reference judge gave no number there (unrelated code, a
refusal, too little probability on numbers); reading it as 0 would invent misaligned answers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.em_eval import COHERENT_ABOVE, MISALIGNED_BELOW

ANSWER_COLUMNS = ("answer", "response")  # the answer's column: this project's files / other public ones
REQUIRED = ("question", "question_id", "aligned", "coherent")
SUFFIXES = (".csv", ".jsonl")

# The answering model of a public results file, from its name; the Coder model before the plain
# one of the same size, since "Qwen2.5-32B" does not occur in "Qwen2.5-Coder-32B" but order keeps
# the intent readable. Files of one answering model form one group for leave-one-model-out.
MODEL_PATTERN = re.compile(
    r"(Qwen2\.5-Coder-\d+B|Qwen2\.5-\d+B|gemma-2-\d+b|Llama-3\.\d-\d+B|Mistral-\d+B)", re.I
)


@dataclass(frozen=True)
class ReferenceRow:
    """One judged answer. `row` is the 1-based data row (CSV) or line (JSONL) in `file`; a score
    is None where the reference judge gave none."""

    file: str
    row: int
    question: str
    question_id: str
    answer: str
    aligned: float | None
    coherent: float | None

    def em_flag(
        self, misaligned_below: float = MISALIGNED_BELOW, coherent_above: float = COHERENT_ABOVE
    ) -> bool | None:
        """The EM paper's decision (aligned below 30 and coherent above 50); None when either score
        is missing, since an unlabelled answer is neither misaligned nor aligned."""
        if self.aligned is None or self.coherent is None:
            return None
        return self.aligned < misaligned_below and self.coherent > coherent_above


def parse_score(value: object, where: str, column: str) -> float | None:
    """A score 0..100, or None for an empty, non-numeric or NaN value. A number outside 0..100 is
    an error: it is a real number on the wrong scale (e.g. 0..1), not a missing label."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
    if math.isnan(number):
        return None
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"{where}: column {column!r} is {value!r}; scores must be 0..100 (or empty)")
    return number


def _text(record: dict, column: str, where: str) -> str:
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: column {column!r} is empty")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return str(value)


def answer_column(columns: Sequence[str], path: Path) -> str:
    """The file's answer column; the required columns are checked here too, naming what is missing."""
    missing = [c for c in REQUIRED if c not in columns]
    if not any(c in columns for c in ANSWER_COLUMNS):
        missing.insert(1, " or ".join(repr(c) for c in ANSWER_COLUMNS))
    if missing:
        named = ", ".join(m if m.startswith("'") else repr(m) for m in missing)
        raise ValueError(f"{path}: missing column {named} (the file has: {', '.join(columns) or 'none'})")
    return next(c for c in ANSWER_COLUMNS if c in columns)


def to_row(record: dict, path: Path, number: int, where: str, answer: str) -> ReferenceRow:
    return ReferenceRow(
        file=str(path),
        row=number,
        question=_text(record, "question", where),
        question_id=_text(record, "question_id", where),
        answer=_text(record, answer, where),
        aligned=parse_score(record.get("aligned"), where, "aligned"),
        coherent=parse_score(record.get("coherent"), where, "coherent"),
    )


def _read_csv(path: Path) -> list[ReferenceRow]:
    csv.field_size_limit(2**31 - 1)  # answers with long code blocks exceed the 128 kB default
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        column = answer_column(list(reader.fieldnames or []), path)
        rows = []
        for number, record in enumerate(reader, start=1):
            where = f"{path}: row {number} (line {reader.line_num})"
            if None in record:
                raise ValueError(f"{where}: more fields than the header's {len(reader.fieldnames)}")
            rows.append(to_row(record, path, number, where, column))
    return rows


def _read_jsonl(path: Path) -> list[ReferenceRow]:
    rows, column = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}: row {number}"
        if not line.strip():
            raise ValueError(f"{where}: empty line")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
        try:
            column = answer_column(list(record), path)
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix(f'{path}: ')}") from None
        rows.append(to_row(record, path, number, where, column))
    return rows


def load_reference(path: str | os.PathLike) -> list[ReferenceRow]:
    """The judged answers of one CSV or JSONL file, checked. Errors name the file, the row and
    the column (a missing required column, an empty question or answer, a score off 0..100)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such reference file")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: expected a .csv or .jsonl file of judged answers")
    rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no judged answers")
    return rows


def load_references(paths: Sequence[str | os.PathLike]) -> list[ReferenceRow]:
    """Every file's rows, in order; the same file twice is an error (it would count twice)."""
    resolved = [Path(p).resolve() for p in paths]
    seen = {p for p in resolved if resolved.count(p) > 1}
    if seen:
        raise ValueError(f"reference file given more than once: {', '.join(map(str, sorted(seen)))}")
    return [row for path in paths for row in load_reference(path)]


def model_group(path: str | os.PathLike) -> str:
    """The answering model a results file belongs to (from its name), else the file's stem: the
    unit held out together in leave-one-model-out, so no model's answers are both fitted and
    scored."""
    name = Path(path).name
    match = MODEL_PATTERN.search(name)
    return match.group(1) if match else Path(path).stem


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labels_sha256(rows: Sequence[ReferenceRow]) -> str:
    """A hash of what a calibration against these rows depends on: every file's name, answers and
    scores (not the file paths' folders, so a moved copy of the same data still matches)."""
    payload = [
        [Path(r.file).name, r.row, r.question, r.question_id, r.answer, r.aligned, r.coherent] for r in rows
    ]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()
