"""Notebook context in a prompt: values as a model can read them, cells and their errors.

A ``{name}`` in a ``%%stream`` or chat prompt is rendered here, not with
``str()``: ``str()`` of a DataFrame with a million rows is the whole frame, and
of a figure is ``Figure(640x480)``. What a value becomes:

- a string: itself;
- a pandas DataFrame: its shape, its column types and a Markdown table of its
  first rows (``max_rows``, 10 by default), with the cut stated;
- a pandas Series: its name, length, type and first values, the same way;
- a figure or image (matplotlib ``Figure``, PIL image, ``IPython.display.Image``):
  not text at all but an attachment sent with the prompt (an image part); the
  prompt says ``[image 1: figure.png]`` where it stood;
- anything else: its IPython text representation (what the cell would show), so
  lists, dicts and numpy arrays read as they do in the notebook.

Every rendering is then capped at ``max_chars`` with the cut stated in the prompt.

``{In[3]}`` is the source of cell 3, ``{Out[3]}`` its output value (rendered as
above), ``{_}`` the last output, and ``{Err}`` / ``{Err[3]}`` the traceback of the
last failed cell / of cell 3, as plain text. IPython keeps ``In`` and ``Out``
itself; the tracebacks are kept by :class:`ErrorLog`, which the extension hooks
to ``post_run_cell`` when it loads (only the last :data:`ErrorLog.KEEP` are kept).
"""

from __future__ import annotations

import traceback
from collections import OrderedDict
from typing import Any

#: rows of a DataFrame shown in a prompt
DEFAULT_MAX_ROWS = 10


class ErrorLog:
    """The tracebacks of the cells that failed, by execution count: ``{Err}``, ``{Err[3]}``."""

    KEEP = 50

    def __init__(self) -> None:
        self._errors: OrderedDict[int, str] = OrderedDict()
        self._latest: str | None = None

    def record(self, execution_count: int | None, error: BaseException | None) -> None:
        """Keep ``error``'s traceback; a cell run without history (nbval runs cells with
        ``store_history=False``, so they have no number) still counts for ``{Err}``."""
        if error is None:
            return
        text = _plain(cell_traceback(error))
        self._latest = text
        if execution_count is None:
            return
        self._errors[execution_count] = text
        while len(self._errors) > self.KEEP:
            self._errors.popitem(last=False)

    def post_run_cell(self, result: Any) -> None:
        """IPython's ``post_run_cell`` event: keep the traceback of a failed cell."""
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        info = getattr(result, "info", None)
        count = getattr(result, "execution_count", None)
        if count is None and info is not None:
            count = getattr(info, "execution_count", None)
        self.record(count, error)

    def __getitem__(self, count: int) -> str:
        if count < 0 and self._errors:
            counts = list(self._errors)
            if -count <= len(counts):
                return self._errors[counts[count]]
        if count not in self._errors:
            failed = ", ".join(str(c) for c in self._errors) or "none yet"
            raise KeyError(f"cell {count} did not fail (cells that failed: {failed})")
        return self._errors[count]

    def __str__(self) -> str:
        if self._latest is None:
            raise LookupError("no cell has failed yet, so {Err} has nothing to show")
        return self._latest

    def __repr__(self) -> str:
        return f"<ErrorLog of {len(self._errors)} failed cells>"


#: the kernel's log, fed by the extension (one IPython shell per kernel)
ERRORS = ErrorLog()


def cell_traceback(error: BaseException) -> str:
    """The traceback as a model should read it: from the failing cell on, cells named.

    IPython's own frames (``run_code`` in ``interactiveshell.py``) come before the
    cell's and say nothing about the error, and a cell's file is a temporary path
    (``/tmp/ipykernel_4242/2817390183.py``). As in IPython's own tracebacks, those
    frames are left out and a cell is ``Cell In[3]``, so the text is the same from
    one run (and machine) to the next.
    """
    summary = traceback.TracebackException.from_exception(error)
    cells: dict[str, int] = {}
    try:
        from IPython import get_ipython

        shell = get_ipython()
        cells = dict(getattr(getattr(shell, "compile", None), "_filename_map", None) or {})
    except Exception:
        cells = {}

    def is_cell(filename: str) -> bool:
        return filename in cells or filename.startswith("<ipython-input-")

    stack = list(summary.stack)
    first = next((i for i, frame in enumerate(stack) if is_cell(frame.filename)), 0)
    for frame in stack[first:]:
        if frame.filename in cells:
            frame.filename = f"Cell In[{cells[frame.filename]}]"
    summary.stack = traceback.StackSummary.from_list(stack[first:])
    return "".join(summary.format())


def is_image(value: Any) -> bool:
    """A figure or image that goes to the model as an image part, not as text."""
    if hasattr(value, "savefig") and hasattr(value, "axes"):  # matplotlib Figure
        return True
    if hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL
        return True
    return type(value).__name__ == "Image" and isinstance(getattr(value, "data", None), bytes)


def render(value: Any, *, max_rows: int = DEFAULT_MAX_ROWS) -> str:
    """The text a model is sent for ``value`` (before the length cap)."""
    if isinstance(value, str):
        return value
    if _is_dataframe(value):
        return _dataframe(value, max_rows)
    if _is_series(value):
        return _series(value, max_rows)
    markdown = _repr(value, "_repr_markdown_")
    if markdown:
        return markdown
    try:
        from IPython.lib.pretty import pretty

        return pretty(value, max_seq_length=1000)
    except Exception:
        return repr(value)


# --- pandas, by what the objects can do (no import of pandas here) ---------------------


def _is_dataframe(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("columns", "dtypes", "shape", "head", "iloc"))


def _is_series(value: Any) -> bool:
    return (
        all(hasattr(value, a) for a in ("dtype", "shape", "head", "iloc", "name"))
        and len(getattr(value, "shape", ())) == 1
    )


def _dataframe(frame: Any, max_rows: int) -> str:
    rows, cols = frame.shape
    types = ", ".join(f"{name}: {dtype}" for name, dtype in frame.dtypes.items())
    head = frame.head(max_rows)
    header = ["", *(str(c) for c in head.columns)]
    lines = [
        f"DataFrame with {rows:,} rows and {cols:,} columns",
        f"Column types: {types}",
        "",
        _row(header),
        _row(["---"] * len(header)),
    ]
    for index, row in zip(head.index, head.itertuples(index=False), strict=False):
        lines.append(_row([str(index), *(_cell(v) for v in row)]))
    if rows > max_rows:
        lines.append(f"(first {max_rows:,} of {rows:,} rows)")
    return "\n".join(lines)


def _series(series: Any, max_rows: int) -> str:
    (length,) = series.shape
    name = f" {series.name!r}" if series.name is not None else ""
    lines = [f"Series{name} of {length:,} values, type {series.dtype}"]
    head = series.head(max_rows)
    lines += [f"{index}: {_cell(value)}" for index, value in head.items()]
    if length > max_rows:
        lines.append(f"(first {max_rows:,} of {length:,} values)")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:79] + "…"


def _repr(value: Any, method: str) -> str | None:
    if isinstance(value, type):
        return None
    fn = getattr(value, method, None)
    if not callable(fn):
        return None
    try:
        out = fn()
    except Exception:
        return None
    if isinstance(out, tuple):
        out = out[0]
    return out if isinstance(out, str) else None


def _plain(text: str) -> str:
    """Tracebacks without terminal colours."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
