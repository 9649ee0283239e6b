"""A self-contained `report.html`: the plots inline (base64 PNG), the tables and the run config, so
one file can be mailed, archived or opened years later without the run directory."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anchor.store import atomic_write_bytes

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


def _cell(value: object) -> str:
    if value is None:  # a missing number is shown as missing, never as 0
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.3f}"
    return html.escape(str(value))


def render_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    note = f"<p>{html.escape(table.note)}</p>" if table.note else ""
    return f"<h2>{html.escape(table.title)}</h2>{note}<table><tr>{head}</tr>{body}</table>"


def write_report(
    path: Path,
    title: str,
    intro: str,
    tables: Sequence[Table],
    images: Sequence[tuple[str, Path]],
    config: dict,
) -> Path:
    parts = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    parts += [render_table(t) for t in tables]
    for caption, image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode()
        parts.append(
            f'<h2>{html.escape(caption)}</h2><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        )
    parts.append(
        f"<h2>Run configuration</h2><pre>{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre>"
    )
    document = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    atomic_write_bytes(Path(path), document.encode())
    return Path(path)


def timings_table(rows: Sequence[dict]) -> Table:
    """Where a command's time went (`anchor.timings` rows): each stage's own seconds and work."""
    total = sum(r["seconds"] for r in rows)
    return Table(
        "Where the time went (this call)",
        ["stage", "seconds", "share", "model loads", "tokens generated", "tokens read", "optimizer steps"],
        [
            [
                r["stage"],
                f"{r['seconds']:.1f}",
                f"{r['seconds'] / total:.0%}" if total > 0 else "n/a",
                r["model_loads"],
                r["tokens_generated"],
                r["tokens_read"],
                r["optimizer_steps"],
            ]
            for r in rows
        ],
        f"Wall time of the call that ran the analysis: {total:.0f} s. Each row is a stage's own time (a stage "
        "run inside another is its own row); 'other' is the time outside every stage (loading inputs, "
        "planning, publishing). Stages finished by an earlier call are not rows.",
    )


def add_table(path: Path, table: Table) -> None:
    """Insert a table into a written report, before its run configuration."""
    document = Path(path).read_text()
    marker = "<h2>Run configuration</h2>"
    if marker not in document:
        raise ValueError(f"{path}: not a report written by write_report (no run configuration)")
    atomic_write_bytes(Path(path), document.replace(marker, render_table(table) + marker, 1).encode())
