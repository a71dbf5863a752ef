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

Other cell magics above ``%%stream``. A wrapper such as ``%%time`` or
``%%capture`` runs its body synchronously (``transform_cell`` + ``exec``, or
``run_cell``), where the rewritten ``await`` is a ``SyntaxError`` or asks for a
loop that is already running. So the transformer reads the chain of cell
magics at the top of the cell: when every one above ``%%stream`` is a wrapper
it knows, the whole cell becomes one ``await`` of :func:`run_wrapped`, which
does what each wrapper does around the awaited answer (Stop and Interrupt keep
working):

- ``%%time``: prints CPU and wall time like IPython's ``%%time`` (the CPU time
  is the kernel process's while the answer streamed; the wait is wall time).
- ``%%capture [VAR] [--no-stdout] [--no-stderr] [--no-display]``: IPython's
  ``capture_output`` around the answer, ``VAR`` set to the captured output. With
  displays captured nobody sees a live view, so the answer gets none (``--live
  none`` unless the cell chose one) and the captured output is the final answer
  alone. The capture swaps the shell's output streams for as long as the answer
  streams, so output that other tasks on the kernel's loop write meanwhile (a
  chat widget's reply) is captured too.

``%%timeit``, ``%%prun`` and ``%%debug`` above ``%%stream`` are refused with a
one-line ``UsageError`` saying what to use instead: ``%%timeit`` would pay for
the same answer many times, and the profiler and debugger would only see the
event loop waiting. Any other cell magic owns its cell (``%%writefile`` keeps a
``%%stream`` line as text), so such a cell is left alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from collections.abc import Coroutine
from typing import Any

from IPython.core.error import UsageError

_HEADER = re.compile(r"%%stream(?=\s|$)(?P<args>[^\n]*)")
_CELL_MAGIC = re.compile(r"%%(?P<name>[A-Za-z_][\w.]*)(?=\s|$)(?P<args>[^\n]*)")
RUNNER = "pk_notebook.notebook.runner"
HERE = "pk_notebook.notebook.transformer"

#: Cell magics that may stand above ``%%stream``: :func:`run_wrapped` does their job.
WRAPPERS = ("time", "capture")

#: Cell magics that cannot sensibly wrap a streamed answer, and what to do instead.
REFUSED = {
    "timeit": "%%timeit would send the prompt, and pay for an answer, many times: put "
    "%%time above %%stream to time one answer, or read -o VAR's timings",
    "prun": "%%prun would profile only the event loop waiting for the answer: put %%time "
    "above %%stream, or profile your own code in a cell of its own",
    "debug": "%%debug cannot step through an answer that streams on the event loop: run "
    "%%stream on its own, and %debug after an error",
}

Wrapper = tuple[str, str]  # (magic name, its line)


def rewrite_stream_cell(lines: list[str]) -> list[str]:
    """The transformer (``ip.input_transformers_cleanup``): lines in, lines out."""
    found = _stream_cell(lines)
    if found is None:
        return lines
    wrappers, index, args = found
    for name, _ in wrappers:
        if name in REFUSED:
            return [f"__import__({HERE!r}, fromlist=['refuse']).refuse({REFUSED[name]!r})\n"]
    if _asks_for_help(args):
        # The cell magic would refuse an empty body before it could print the help.
        return [f"__import__({RUNNER!r}, fromlist=['print_help']).print_help()\n"]
    if not can_await():
        return lines  # IPython's own magics run the cell; %%stream then blocks
    body = "".join(lines[index + 1 :])
    if not wrappers:
        call = f"__import__({RUNNER!r}, fromlist=['run_cell']).run_cell({args!r}, {body!r})"
    else:
        call = (
            f"__import__({HERE!r}, fromlist=['run_wrapped'])"
            f".run_wrapped({wrappers!r}, {args!r}, {body!r})"
        )
    return [f"await {call}\n"]


def _stream_cell(lines: list[str]) -> tuple[list[Wrapper], int, str] | None:
    """The wrappers above ``%%stream``, its line index and its options; None if not ours."""
    wrappers: list[Wrapper] = []
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        if wrappers and not line.strip():
            continue  # IPython drops blank lines before a wrapped cell's magic too
        match = _HEADER.fullmatch(line)
        if match is not None:
            return wrappers, index, match.group("args").strip()
        magic = _CELL_MAGIC.fullmatch(line)
        if magic is None or (magic.group("name") not in WRAPPERS + tuple(REFUSED)):
            return None  # not a cell magic, or one that owns its cell (%%writefile, ...)
        wrappers.append((magic.group("name"), magic.group("args").strip()))
    return None


def refuse(message: str) -> None:
    """What a refused wrapper cell runs: one line, no traceback."""
    raise UsageError(message)


async def run_wrapped(wrappers: list[Wrapper], line: str, cell: str) -> None:
    """Run a ``%%stream`` cell inside ``%%time`` / ``%%capture`` (outermost first)."""
    from .runner import run_cell

    if not wrappers:
        await run_cell(line, cell)
        return
    (name, args), inner = wrappers[0], wrappers[1:]
    if name == "time":
        if args:
            raise UsageError(f"%%time above %%stream takes no options, got {args!r}")
        await _timed(run_wrapped(inner, line, cell))
    elif name == "capture":
        await _captured(args, inner, line, cell)
    else:  # pragma: no cover - _stream_cell lets only WRAPPERS through
        raise UsageError(f"%%{name} cannot wrap %%stream")


async def _timed(run: Coroutine[Any, Any, None]) -> None:
    """IPython's ``%%time`` report around an awaited run (printed even if it fails)."""
    cpu, wall = os.times(), time.perf_counter()
    try:
        await run
    finally:
        end, wall_end = os.times(), time.perf_counter()
        user, system = end.user - cpu.user, end.system - cpu.system
        print(
            f"CPU times: user {format_seconds(user)}, sys: {format_seconds(system)}, "
            f"total: {format_seconds(user + system)}\n"
            f"Wall time: {format_seconds(wall_end - wall)}"
        )


async def _captured(args_line: str, inner: list[Wrapper], line: str, cell: str) -> None:
    """IPython's ``%%capture`` around an awaited run (same options, same ``VAR``)."""
    from IPython import get_ipython
    from IPython.core.magic_arguments import parse_argstring
    from IPython.core.magics.execution import ExecutionMagics
    from IPython.utils.capture import capture_output

    args = parse_argstring(ExecutionMagics.capture, args_line)
    if not args.no_display:
        line = _without_live_view(line)
    with capture_output(not args.no_stdout, not args.no_stderr, not args.no_display) as io:
        await run_wrapped(inner, line, cell)
    shell = get_ipython()
    if args.output and shell is not None:
        shell.user_ns[args.output] = io


def _without_live_view(line: str) -> str:
    """``line`` with ``--live none`` unless it chose a live view itself."""
    try:
        words = shlex.split(line)
    except ValueError:
        return line  # the runner reports the bad quoting
    if any(word == "--live" or word.startswith("--live=") for word in words):
        return line
    return f"{line} --live none".strip()


def format_seconds(seconds: float) -> str:
    """A duration as IPython's ``%%time`` shows one: ``312 ms``, ``1.24 s``, ``2min 5s``."""
    if seconds >= 60:
        left, parts = int(seconds), []
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            value, left = divmod(left, size)
            if value:
                parts.append(f"{value}{unit}")
        return " ".join(parts)
    units = (("s", 1.0), ("ms", 1e3), ("μs", 1e6), ("ns", 1e9))
    for unit, scale in units:
        if seconds * scale >= 1 or unit == "ns":
            return f"{seconds * scale:.3g} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


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
