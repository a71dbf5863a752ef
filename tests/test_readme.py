"""The README's promises: the two commands first, and its Python snippet runs as written."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_starts_with_the_two_commands() -> None:
    lines = [line.strip() for line in README.splitlines() if line.strip()]
    assert lines[0] == "# pk_notebook"
    assert lines[1].startswith("make lab")
    assert lines[2].startswith("make test")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_first_python_snippet_runs_as_written_offline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = python_blocks()[0]
    # Top-level await, as in a notebook cell: compile it the way IPython does.
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, object] = {}

    async def run() -> None:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            await result

    asyncio.run(run())
    out = capsys.readouterr().out
    assert out.startswith("## A day in Lisbon")
    assert "finished Usage(input_tokens=" in out
