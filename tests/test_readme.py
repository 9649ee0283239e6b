"""The README's "Use it from Python" example runs, on the tiny model instead of the default one."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tiny_dir, capsys):
    code = python_example()
    assert 'model_spec = "default"' in code  # the one line the test swaps for the tiny model
    exec(
        compile(code.replace('model_spec = "default"', f"model_spec = {tiny_dir!r}"), "README.md", "exec"), {}
    )
    out = capsys.readouterr().out
    assert "stoic: 2 traits, 2 contrast pairs (derived)" in out
    assert re.search(r"persona direction: best layer \d+, held-out probe accuracy [01]\.\d\d", out)
    assert re.search(r"coherence: \[(None|\d+\.\d+)\]", out)
