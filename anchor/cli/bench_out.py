"""Where a benchmark's table goes: printed, and appended under its own heading to a markdown file."""

from __future__ import annotations

from pathlib import Path


def append_table(out: str | Path, heading: str, text: str) -> Path:
    """Print `text`, append it to `out` under `## heading`, and say where it went."""
    print(text)
    path = Path(out)
    with path.open("a") as f:
        f.write(f"\n## {heading}\n\n{text}")
    print(f"table appended to {path.resolve()}")
    return path
