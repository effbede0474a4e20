"""README blocks run as written (in a fresh folder, offline): the quantization, CPU and ONNX sections.
A changed default or name that breaks one of these lines fails here."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block after the line ``heading``."""
    text = README.read_text()
    start = text.index("\n" + heading + "\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@pytest.mark.parametrize("heading", ["## Quantization", "### Fast on the CPU", "### Export to ONNX"])
def test_readme_block_runs_as_written(heading, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the block writes land here
    script = tmp_path / "block.py"
    script.write_text(python_block(heading))
    runpy.run_path(str(script), run_name="__main__")
