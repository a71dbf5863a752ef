"""Turn a ``%%stream`` cell into a top-level ``await`` so Stop works while it runs.

A cell magic is synchronous: while it runs, the kernel's loop is blocked and a
Stop button's click is only handled after the answer has ended. IPython lets a
cell ``await`` at top level instead, and ipykernel >= 7.4 runs such a cell as a
task on its loop, handling widget messages meanwhile (click to cancel in about
2 ms) and turning Kernel > Interrupt into cancellation of the task. So this
cleanup transformer rewrites::

    %%stream --session trip
    Plan a day in {city}.

into one line (shown wrapped)::

    await __import__('pk_notebook.notebook.runner', fromlist=['run_cell']).run_cell(
        '--session trip', 'Plan a day in {city}.\\n')

A cell asking for ``--help`` becomes a call that prints the help. The cell is
left alone (the cell magic then runs it, blocking) when the shell cannot await
on an asyncio loop that is already running: terminal IPython, ``autoawait``
off, a trio runner.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from typing import Any

_HEADER = re.compile(r"%%stream(?=\s|$)(?P<args>[^\n]*)")
RUNNER = "pk_notebook.notebook.runner"


def rewrite_stream_cell(lines: list[str]) -> list[str]:
    """The transformer (``ip.input_transformers_cleanup``): lines in, lines out."""
    if not lines:
        return lines
    match = _HEADER.fullmatch(lines[0].rstrip("\r\n"))
    if match is None:
        return lines
    args = match.group("args").strip()
    if _asks_for_help(args):
        # The cell magic would refuse an empty body before it could print the help.
        return [f"__import__({RUNNER!r}, fromlist=['print_help']).print_help()\n"]
    if not can_await():
        return lines
    body = "".join(lines[1:])
    return [f"await __import__({RUNNER!r}, fromlist=['run_cell']).run_cell({args!r}, {body!r})\n"]


def _asks_for_help(args: str) -> bool:
    try:
        words = shlex.split(args)
    except ValueError:
        return False  # let the magic report the bad quoting
    return "-h" in words or "--help" in words


def can_await(shell: Any = None) -> bool:
    """True in a kernel whose cells may ``await`` on its running asyncio loop."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if (
        shell is None
        or getattr(shell, "kernel", None) is None
        or not getattr(shell, "autoawait", False)
    ):
        return False
    try:
        from IPython.core.async_helpers import _asyncio_runner
    except ImportError:  # pragma: no cover - every supported IPython has it
        return False
    if shell.loop_runner is not _asyncio_runner:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def install(shell: Any) -> None:
    transforms = shell.input_transformers_cleanup
    if rewrite_stream_cell not in transforms:
        transforms.append(rewrite_stream_cell)


def uninstall(shell: Any) -> None:
    transforms = shell.input_transformers_cleanup
    while rewrite_stream_cell in transforms:
        transforms.remove(rewrite_stream_cell)
