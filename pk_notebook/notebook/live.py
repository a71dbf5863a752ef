"""The live rendering surface: a growing answer, throttled, with Stop and a status line.

:class:`LiveOutput` knows nothing about magics or pipelines: feed it text with
:meth:`~LiveOutput.push`, give it a ``status`` callable and an ``on_stop``
callable, and end it with :meth:`~LiveOutput.finish`. The ``%%stream`` cell
runner uses it (the chat widget renders its own transcript).

Why it looks the way it does (measured facts, see the design notes):

- Every update re-sends the whole text, and jupyter_server drops iopub messages
  above 1000/s, so renders go through :class:`~pk_notebook.runtime.text.Throttle`:
  the first text at once, then at most one render per ``interval`` (20/s), and
  the whole text at the end. The interval also grows with the text so that no
  more than ``max_bytes_per_second`` are re-rendered per second: a long answer
  costs time proportional to its duration, never quadratic in its length.
- nbval records every ``display_data`` of a cell but ignores ``clear_output``,
  ``update_display_data`` and widget views. In batch runs (no stdin: nbclient,
  nbval, papermill) nobody watches, so there is no live view at all and the
  final output is the only one. Interactively, the end is
  ``clear_output(wait=True)`` plus one fresh ``display_data`` with the final
  text, so the saved notebook holds exactly that output.
- The answer grows in a plain display (``update_display_data``), never inside a
  widget: it shows in every front end, with or without a widget manager. Only
  the Stop button and the status line are a widget, whose display carries a
  plain-text hint as its fallback, so a front end that cannot draw widgets says
  why there is no Stop button instead of showing nothing.

Surfaces (``surface=``):

``widget``  ipywidgets and ipykernel >= 7.4: Stop button, status line, growing answer.
``display`` no ipywidgets, or an older kernel that handles a click only after the
            cell ends: status line with a one-line hint (Kernel > Interrupt works),
            growing answer. No dead button.
``text``    no kernel (terminal IPython, scripts): the text is printed as it arrives.
``none``    batch runs: nothing live, only the final output.
``auto``    picks one of the above with :func:`detect_surface`.

Reasoning and tool calls (:meth:`LiveOutput.push_reasoning`,
:meth:`LiveOutput.tool_event`) are parts of their own, in arrival order, each in
a display of its own (see :mod:`.parts_view` for how they look): the first part
takes the display the answer would have had, the next ones get new displays
below it. So a Thinking section that has closed, or a tool card that is done, is
never re-rendered again, and a reader who opens or closes it keeps it that way
while the answer streams on. Text after a part starts a new display too. The
final output is still one ``display_data`` holding every part in order (see
:func:`~pk_notebook.notebook.parts_view.turn_bundle`); a turn without reasoning
or tools renders exactly as it did before.

Incremental updates (``incremental=True``, the default for ``markdown`` and
``text``): a stretch of answer text is not one display updated with the whole
text. :class:`~pk_notebook.notebook.blocks.BlockSplitter` cuts it, as it
arrives, into finished blocks and an unfinished tail; the tail lives in a
display of its own, updated at most 20 times a second (10 while the stream is
slower than the tail is long) with the tail only; when
blocks finish, that display is updated once more with them (and never again)
and the new tail gets a new display below. So each update sends what arrived
since the last one plus a tail of at most about 1.5 kB, whatever the answer's
length, and the front end renders each block once. The tail is rendered so that
half-written Markdown does not jump (an open code fence shows as code, math is
typeset only when closed; see :mod:`.blocks`). The live pieces carry
``text/markdown`` only (no ``text/plain`` copy: every notebook front end renders
Markdown). The final output is unchanged: ``clear_output(wait=True)`` and the
one final ``display_data``, exactly as before. ``-f code`` keeps whole-text
updates (its answer is one code block).

Delta transport (:mod:`.tail_view`, ``DELTA``): re-sending the tail is cheap on a
fast stream and many times the new text on a slow one. Where the front end can
render Markdown itself (JupyterLab and Notebook 7 with anywidget's front end, and
ipykernel >= 7.4, which hears the front end while the cell runs), a stretch of
text is one widget view instead: the kernel sends edits of the Markdown it holds
(what arrived, plus the few characters the tail's rendering rules change), and
the browser renders finished blocks once and the tail on each update with
JupyterLab's own renderer. The kernel switches to it only when the front end has
said so, so a front end that cannot do it (anywidget missing where JupyterLab
runs, VS Code, Colab) never shows a broken widget: it gets the display updates
above. The final output is the same either way.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..runtime.text import Throttle
from ..runtime.types import ToolCall, ToolEvent, ToolResult
from .blocks import BlockSplitter, piece_markdown
from .comms import close_widgets
from .markdown import close_open_fence, safe_markdown
from .markdown import escape_markdown as escape_markdown  # re-exported: magic.py uses it
from .parts_view import (
    Part,
    TextBlock,
    ThinkingBlock,
    ToolCard,
    TurnParts,
    one_line,
    part_markdown,
    part_plain,
    turn_bundle,
)
from .status import Note as Note  # re-exported: runner.py uses it
from .tail_view import HAVE_ANYWIDGET, TailChannel

logger = logging.getLogger("pk_notebook")

SURFACES = ("auto", "widget", "display", "text", "none")
FORMATS = ("markdown", "text", "code")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

#: live updates send only what is new (see "Incremental updates" above); False brings
#: back the whole-text updates (kept for the benchmark's comparison, ``benchmarks/live.py``)
INCREMENTAL = True
#: where the front end can (see :mod:`.tail_view`), incremental updates send edits of the
#: text the browser holds and the browser renders it; False keeps display updates
DELTA = True
#: at most this many characters of finished text go out in one update (a burst is
#: shown over several updates, so the browser never renders a megabyte at once)
FINISHED_PER_UPDATE = 32_000
#: incremental updates refresh the status line only if the tick (every 0.5 s) has not
#: for this long: the line changes on every update, and each refresh is a message
STATUS_INTERVAL = 0.5


# --- choosing a surface ---------------------------------------------------------------


def _kernel(shell: Any) -> Any:
    kernel = getattr(shell, "kernel", None)
    return kernel if getattr(kernel, "session", None) is not None else None


def is_batch_request(shell: Any) -> bool:
    """True when the running cell came from a tool that does not read stdin.

    JupyterLab, Notebook 7 and VS Code send ``allow_stdin: true``; nbclient,
    nbval, papermill and ``jupyter nbconvert --execute`` send ``false``. A run
    nobody watches gets no live view (and no widget state in the saved file).
    """
    kernel = _kernel(shell)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent()
    except Exception:
        return False
    content = (parent or {}).get("content") or {}
    return content.get("allow_stdin") is False


def widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


#: shown (as the widget's plain-text fallback) where the front end cannot draw widgets
HINT_NO_WIDGETS = (
    "Stop needs Jupyter widgets in this front end (install jupyterlab_widgets where "
    "JupyterLab runs); Kernel > Interrupt stops the answer and keeps what arrived."
)
HINT_NO_IPYWIDGETS = (
    "Stop needs ipywidgets in this kernel (pip install ipywidgets); "
    "Kernel > Interrupt stops the answer and keeps what arrived."
)

HINT_APPROVE_NO_WIDGETS = (
    "Run / Deny need Jupyter widgets in this front end (install jupyterlab_widgets where "
    "JupyterLab runs); Kernel > Interrupt ends the turn."
)


def approve_hint(surface: str) -> str:
    """Why ``--approve`` cannot ask on ``surface`` (every call is then denied), in one line."""
    if surface == "none":
        why = "nobody can click Run in a batch run (nbconvert, nbval, papermill)"
    elif surface == "text":
        why = "Run / Deny buttons need a notebook front end"
    elif not widgets_available():
        why = "Run / Deny buttons need ipywidgets in this kernel (pip install ipywidgets)"
    else:
        version = kernel_version()
        why = (
            f"Run / Deny buttons need ipykernel >= {STOP_KERNEL[0]}.{STOP_KERNEL[1]} "
            f"(this kernel has {version or 'an unknown version'})"
        )
    return f"--approve: {why}, so every tool call is denied."


#: the first ipykernel that handles a widget message while a cell awaits (ipykernel#1565)
STOP_KERNEL = (7, 4)


def kernel_version() -> str | None:
    """The running ipykernel's version, or None outside one."""
    try:
        import ipykernel
    except ImportError:
        return None
    return str(getattr(ipykernel, "__version__", "")) or None


def stop_supported(version: str | None = None) -> bool:
    """True if this kernel can handle a Stop click while the cell is still running."""
    version = kernel_version() if version is None else version
    if not version:
        return False
    numbers = re.findall(r"\d+", version)[:2]
    if len(numbers) < 2:
        return False
    return (int(numbers[0]), int(numbers[1])) >= STOP_KERNEL


def hint_old_kernel(version: str | None = None) -> str:
    version = kernel_version() if version is None else version
    return (
        f"Stop needs ipykernel >= {STOP_KERNEL[0]}.{STOP_KERNEL[1]} (this kernel has "
        f"{version or 'an unknown version'}); Kernel > Interrupt stops the answer and "
        "keeps what arrived."
    )


def detect_surface(shell: Any = None) -> str:
    """``widget``, ``display``, ``text`` or ``none`` for the current cell of ``shell``.

    ``widget`` (a Stop button) only where a click can be handled during the cell:
    ipywidgets present and ipykernel >= 7.4. Elsewhere the answer still grows in
    the cell (``display``) and a hint line says how to stop it.
    """
    if shell is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:
            shell = None
    if _kernel(shell) is None:
        return "text"
    if is_batch_request(shell):
        return "none"
    return "widget" if widgets_available() and stop_supported() else "display"


def display_hint() -> str:
    """Why the ``display`` surface has no Stop button, in one line."""
    if not widgets_available():
        return HINT_NO_IPYWIDGETS
    return hint_old_kernel()


def cell_key(shell: Any) -> str:
    """An id of the running cell (its execute request), "" outside a kernel."""
    kernel = _kernel(shell)
    if kernel is None:
        return ""
    try:
        return str(((kernel.get_parent() or {}).get("header") or {}).get("msg_id", ""))
    except Exception:
        return ""


# Live outputs still on screen, per cell, in the order they started. Several
# streams in one cell (asyncio.gather of two runs) must not clear each other's
# output: the last one to finish replaces the cell's live views with every
# final output, in start order.
_CELLS: dict[str, list[LiveOutput]] = {}


# --- the final output -----------------------------------------------------------------


def code_block(text: str, lang: str | None) -> str:
    """Fence ``text`` as code; an answer that is already one fenced block is kept."""
    stripped = text.strip()
    if stripped.startswith(("```", "~~~")):
        return close_open_fence(stripped)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return (
        f"{fence}{lang or ''}\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}{fence}"
    )


def render_bundle(
    text: str, *, format: str = "markdown", lang: str | None = None, notes: Sequence[Note] = ()
) -> dict[str, str]:
    """The MIME bundle for ``text`` (live or final); deterministic for a given input."""
    plain = text
    if notes:
        plain = (text.rstrip("\n") + "\n\n" if text else "") + "\n".join(n.plain() for n in notes)
    if format == "text":
        return {"text/plain": plain}
    # One sanitiser for every Markdown body, live or final (see markdown.py): raw HTML
    # inert, dangerous links defused, math intact. A "code" answer that was already
    # one fenced block may carry more after its fence, so it is checked too.
    body = safe_markdown(code_block(text, lang) if format == "code" else close_open_fence(text))
    if notes:
        body = (body.rstrip("\n") + "\n\n" if body.strip() else "") + "\n>\n".join(
            n.markdown() for n in notes
        )
    return {"text/markdown": body, "text/plain": plain}


# --- the live view --------------------------------------------------------------------


class LiveOutput:
    """A growing answer in the current cell. Use from the event loop's thread.

    Parameters:
        format: ``markdown``, ``text`` or ``code`` (fenced, with ``lang``).
        surface: one of :data:`SURFACES`; ``auto`` detects it.
        on_stop: called (possibly from another thread) when Stop is clicked.
        status: returns the status line; called at each render and every ``tick`` s.
        interval: shortest time between two renders (0.05 s = 20 renders/s).
        max_bytes_per_second: longer texts render less often, so re-rendering
            costs at most this many bytes per second.
    """

    def __init__(
        self,
        *,
        format: str = "markdown",
        lang: str | None = None,
        surface: str = "auto",
        on_stop: Callable[[], None] | None = None,
        status: Callable[[], str] | None = None,
        interval: float = 0.05,
        max_bytes_per_second: float = 250_000,
        tick: float = 0.5,
        shell: Any = None,
        note: str = "",
        incremental: bool | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        if surface not in SURFACES:
            raise ValueError(f"surface must be one of {', '.join(SURFACES)}, not {surface!r}")
        self.format = format
        self.lang = lang
        self.surface = detect_surface(shell) if surface == "auto" else surface
        self.on_stop = on_stop
        self.status = status
        self.interval = interval
        self.max_bytes_per_second = max_bytes_per_second
        self.tick = tick
        self.note = note  # one more line under the status (e.g. what was substituted)
        self.updates = 0  # renders sent to the front end (for tests and benchmarks)
        self.stop_clicked = False
        self._loop = asyncio.get_running_loop()
        if incremental is None:
            incremental = INCREMENTAL
        # Incremental updates where there are displays to update and Markdown or text to
        # cut into blocks; a terminal prints as before, and -f code is one block anyway.
        self.incremental = (
            incremental and self.surface in ("widget", "display") and format != "code"
        )
        self._throttle: Throttle | _Pacer = (
            _Pacer(self._render_incremental, interval)
            if self.incremental
            else Throttle(self._render, interval)
        )
        self.bytes_sent = 0  # characters of answer text sent by live updates
        self.render_cpu: list[float] = []  # CPU seconds of each answer update
        self._splitter: BlockSplitter | None = None
        self._tail_handle: Any = None  # the display of the current block's tail
        self._backlog: deque[str] = deque()  # finished pieces not sent yet
        self._live_handles: list[Any] = []  # displays made for finished pieces and tails
        self._last_tail: dict[str, str] = {}  # what the tail's display shows now
        self._fed = 0  # characters of the current block fed at the last update
        self._status_at = -1e9  # when an update last refreshed the status line
        # Delta transport (see tail_view.py): one channel per stretch of text, used once
        # its front end says it renders Markdown; until then, display updates.
        self._channel: TailChannel | None = None
        self._channels: list[TailChannel] = []
        self._delta_view: Any = None  # the display showing the current channel's view
        self._ticker: asyncio.TimerHandle | None = None
        self._printed = 0
        self._shown = False
        self._finished = False
        self._root: Any = None
        self._button: Any = None
        self._status_widget: Any = None
        self._body_handle: Any = None
        self._status_handle: Any = None
        self._last_status = ""
        self._shell = shell
        self._cell = ""
        self._final: dict[str, str] | None = None
        # Reasoning, tool cards and stretches of text, in order; each shown in its own display.
        self.parts = TurnParts()
        self._text_block: TextBlock | None = None
        self._handles: dict[int, Any] = {}  # id(part) -> its display handle
        self._free_handle: Any = None  # the first display, taken by the first part
        self._dirty: list[Part] = []
        self._parts_timer: asyncio.TimerHandle | None = None
        self._parts_last: float | None = None

    def __repr__(self) -> str:
        return f"<LiveOutput surface={self.surface} format={self.format} updates={self.updates}>"

    @property
    def text(self) -> str:
        return self._throttle.text

    # --- lifecycle ------------------------------------------------------------------

    def show(self) -> LiveOutput:
        """Display the (empty) live view in the current cell."""
        if self._shown:
            return self
        self._shown = True
        if self.surface != "text":
            self._cell = cell_key(self._shell)
            _CELLS.setdefault(self._cell, []).append(self)
        if self.surface == "widget":
            try:
                self._show_widget()
            except Exception:  # no comm manager after all: fall back to plain displays
                logger.warning(
                    "the live widget could not be shown; using display updates", exc_info=True
                )
                self.surface = "display"
        if self.surface == "display":
            from IPython.display import display

            self._status_handle = display(
                {"text/plain": self._status_text()}, raw=True, display_id=True
            )
        if self.surface in ("widget", "display"):
            from IPython.display import display

            # The answer itself is a plain display, updated in place: it grows in any
            # front end, with or without a widget manager.
            self._body_handle = display({"text/plain": ""}, raw=True, display_id=True)
            self._free_handle = self._body_handle
        if self._delta_possible():
            # Made now, so the front end's "ready" arrives while the provider connects.
            self._channel = self._new_channel()
        if self.surface in ("widget", "display") and self.status is not None and self.tick:
            self._ticker = self._loop.call_later(self.tick, self._on_tick)
        return self

    def push(self, text: str) -> None:
        """Add ``text`` to the answer; it is rendered now or within ``interval``."""
        if not text or self._finished:
            return
        block, closed = self.parts.add_text(text)
        if block is not self._text_block:
            self._part_closed(closed)
            self._text_block = block
            self._take_display(block)
            if self.incremental:
                self._splitter = BlockSplitter()
                self._tail_handle = self._handles.get(id(block))
                self._backlog.clear()
                self._last_tail = {}
                self._fed = 0
                if self._delta_view is not None:
                    # The last stretch's view stays as it is; this one gets a fresh channel
                    # (a new model), and only if the front end took the first one.
                    self._delta_view = None
                    self._channel = self._new_channel()
        if self._splitter is not None:
            self._splitter.feed(text)
        self._throttle.push(text)

    def push_reasoning(self, text: str) -> None:
        """Add reasoning ("thinking") text: its own collapsible section, never the answer."""
        if not text or self._finished:
            return
        if isinstance(self.parts.last, TextBlock):
            self._throttle.close()  # the text so far goes to its own display first
        block = self.parts.add_reasoning(text)
        self._take_display(block)
        self._mark(block)

    def tool_event(self, event: ToolEvent) -> ToolCard | None:
        """Show a tool call's progress (its card is made on the first event)."""
        if self._finished:
            return None
        if self.parts.find(event) is None and isinstance(self.parts.last, TextBlock):
            self._throttle.close()
        card, closed = self.parts.add_tool_event(event)
        self._part_closed(closed)
        self._take_display(card)
        self._mark(card)
        if card.done and self.surface == "text":
            self._flush_parts()
        return card

    def show_part(self, part: Part) -> None:
        """Re-render ``part`` (e.g. a card whose state was changed from outside)."""
        if not self._finished:
            self._mark(part)

    def finish(
        self, notes: Sequence[Note] = (), tool_results: Sequence[ToolResult] = ()
    ) -> dict[str, str]:
        """End the live view and show the final text (with ``notes``) once.

        The cell's live outputs are cleared and the final text is displayed as one
        fresh ``display_data`` that batch tools record. ``tool_results`` (the
        result's) give each tool card its final status. Returns the final bundle.
        """
        # The live view is about to be replaced: no last live update (it would be waste).
        text = (
            self._throttle.close(flush=False)
            if isinstance(self._throttle, _Pacer)
            else self._throttle.close()
        )
        if self.surface == "text":
            self.parts.finish(tool_results)
            self._flush_parts()
        self._finished = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._parts_timer is not None:
            self._parts_timer.cancel()
            self._parts_timer = None
        self.parts.finish(tool_results)
        bundle = self.final_bundle(text, notes)
        if self.surface == "text":
            out = text[self._printed :]
            if text and not text.endswith("\n"):
                out += "\n"
            if notes:
                out += "\n" + "\n".join(n.plain() for n in notes) + "\n"
            sys.stdout.write(out)
            sys.stdout.flush()
            self._printed = len(text)
            return bundle
        self._final = bundle
        group = _CELLS.get(self._cell, [])
        if any(other is not self and not other._finished for other in group):
            # Another stream of this cell is still live: show ours in place for now.
            self._park(bundle)
            return bundle
        self._replace_cell_outputs(group or [self])
        return bundle

    def final_bundle(self, text: str, notes: Sequence[Note] = ()) -> dict[str, str]:
        """The final output: the answer as always, or, with reasoning or tool calls,
        every part in order (collapsed, no durations: byte-stable), then the notes."""
        if not self.parts.has_parts:
            return render_bundle(text, format=self.format, lang=self.lang, notes=notes)
        return turn_bundle(
            self.parts,
            text,
            render_text=self._text_markdown,
            notes_markdown="\n>\n".join(n.markdown() for n in notes),
            notes_plain="\n".join(n.plain() for n in notes),
            markdown=self.format != "text",
        )

    def _text_markdown(self, piece: str) -> str:
        return render_bundle(piece, format=self.format, lang=self.lang)["text/markdown"]

    def _park(self, bundle: dict[str, str]) -> None:
        if self._root is not None:
            self._root.layout.display = "none"  # no Stop for an answer that has ended
        handles = [self._body_handle] + [
            h for h in [*self._handles.values(), *self._live_handles] if h is not self._body_handle
        ]
        for k, handle in enumerate(h for h in handles if h is not None):
            handle.update(bundle if k == 0 else {"text/plain": ""}, raw=True)

    @staticmethod
    def _replace_cell_outputs(group: list[LiveOutput]) -> None:
        from IPython.display import clear_output, display

        if any(live._shown and live.surface in ("widget", "display") for live in group):
            clear_output(wait=True)
        for live in list(group):
            if live._final is not None:
                display(live._final, raw=True)
            live.close()

    def close(self) -> None:
        """Release the widgets (their comms); the displayed final output stays."""
        self._leave_cell()
        for channel in self._channels:
            channel.close()
        self._channels = []
        self._channel = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._root is not None:
            close_widgets((self._button, self._status_widget, self._root))
            self._root = None

    def _leave_cell(self) -> None:
        group = _CELLS.get(self._cell)
        if group is not None and self in group:
            group.remove(self)
            if not group:
                del _CELLS[self._cell]

    def refresh_status(self) -> None:
        """Re-render the status line now (e.g. when a stream has just started)."""
        self._show_status(self._status_text())

    # --- rendering --------------------------------------------------------------------

    def _render(self, text: str) -> None:
        block = self._text_block
        start = block.start if block is not None else 0
        # Long answers render less often: bytes re-sent per second stay bounded.
        self._throttle.interval = max(
            self.interval, (len(text) - start) / self.max_bytes_per_second
        )
        self.updates += 1
        if self.surface == "text":
            sys.stdout.write(text[self._printed :])
            sys.stdout.flush()
            self._printed = len(text)
            return
        if self.surface == "none":
            return
        began = time.thread_time()
        bundle = render_bundle(text[start:], format=self.format, lang=self.lang)
        handle = self._handles.get(id(block)) if block is not None else self._body_handle
        if handle is not None:
            handle.update(bundle, raw=True)
            self.bytes_sent += sum(len(v) for v in bundle.values())
        self.render_cpu.append(time.thread_time() - began)
        self._show_status(self._status_text())

    def _delta_possible(self) -> bool:
        return (
            DELTA
            and HAVE_ANYWIDGET
            and self.incremental
            and self.surface == "widget"
            and self.format == "markdown"
        )

    def _new_channel(self) -> TailChannel | None:
        if self._channels and not any(ch.usable for ch in self._channels):
            return None  # the front end never took the first one: display updates it is
        try:
            channel = TailChannel()
        except Exception:
            logger.debug("no delta view; using display updates", exc_info=True)
            return None
        self._channels.append(channel)
        return channel

    def _render_incremental(self, last: bool) -> None:
        """Send what is new: finished blocks once, then the tail (see the module docstring)."""
        splitter = self._splitter
        if splitter is None or self.surface not in ("widget", "display"):
            return
        began = time.thread_time()
        self.updates += 1
        self._backlog.extend(splitter.take())
        channel = self._channel
        if channel is not None and channel.usable:
            self._render_delta(channel, splitter, last)
            self.render_cpu.append(time.thread_time() - began)
            self._status_now()
            return
        for batch in self._finished_batches(last):
            # The tail's display shows these finished blocks from now on, for good;
            # the next tail gets a display of its own below it.
            self._send(self._tail_handle, self._piece_bundle(batch, finished=True))
            self._tail_handle = None
        if self._backlog and isinstance(self._throttle, _Pacer):
            self._throttle.poke()  # the rest at the next update; the tail after it
        else:
            tail = self._piece_bundle(splitter.tail, finished=False)
            if self._tail_handle is None and not any(v.strip() for v in tail.values()):
                pass  # nothing to show yet
            elif self._tail_handle is None or tail != self._last_tail:
                self._tail_handle = self._send(self._tail_handle, tail)
            self._last_tail = tail
        # A slow stream re-sends a tail bigger than what arrived: update 10 times a second
        # then (not 20), so the tail costs half; a fast one goes on at the full pace.
        arrived, self._fed = splitter.fed - self._fed, splitter.fed
        self._throttle.interval = (
            self.interval if 2 * arrived >= len(splitter.tail) else max(self.interval, 0.1)
        )
        self.render_cpu.append(time.thread_time() - began)
        self._status_now()

    def _finished_batches(self, last: bool) -> list[str]:
        """Finished text to send now: up to FINISHED_PER_UPDATE characters, or all if last."""
        batches = []
        while self._backlog:
            batch, size = [], 0
            while self._backlog and (size < FINISHED_PER_UPDATE or last):
                piece = self._backlog.popleft()
                batch.append(piece)
                size += len(piece)
            batches.append("".join(batch))
            if not last:
                break
        return batches

    def _status_now(self) -> None:
        # The status line's numbers change on every update; a few times a second is enough.
        now = self._loop.time()
        if now - self._status_at >= STATUS_INTERVAL:
            self._status_at = now
            self._show_status(self._status_text())

    def _render_delta(self, channel: TailChannel, splitter: BlockSplitter, last: bool) -> None:
        """Edits of what the browser's view holds: finished pieces, then the tail."""
        if self._delta_view is None:
            # Switch: the view takes the tail's place (or a new display below what has
            # been shown), and from now on holds every finished piece and the tail.
            view = channel.view
            self.bytes_sent += len(json.dumps(view))
            if self._tail_handle is not None:
                self._tail_handle.update(view, raw=True)
                self._delta_view = self._tail_handle
            else:
                from IPython.display import display

                self._delta_view = display(view, raw=True, display_id=True)
                self._live_handles.append(self._delta_view)
            self._tail_handle = None
        finished = [piece_markdown(batch) for batch in self._finished_batches(last)]
        before = channel.bytes_sent
        tail = "" if self._backlog else splitter.tail_markdown()
        channel.update(finished, tail)
        self.bytes_sent += channel.bytes_sent - before
        if self._backlog and isinstance(self._throttle, _Pacer):
            self._throttle.poke()  # the rest at the next update
        # An edit costs what arrived plus a message's envelope (~100 bytes: comm id, method):
        # when little arrives per update (a slow stream), a little over 10 updates a second
        # (timers run late, and 10 is the floor we promise), else the full pace.
        arrived, self._fed = splitter.fed - self._fed, splitter.fed
        self._throttle.interval = self.interval if arrived >= 200 else max(self.interval, 0.09)

    def _piece_bundle(self, text: str, *, finished: bool) -> dict[str, str]:
        if self.format == "text":
            return {"text/plain": text}
        if finished:
            return {"text/markdown": piece_markdown(text)}
        assert self._splitter is not None
        return {"text/markdown": self._splitter.tail_markdown()}

    def _send(self, handle: Any, bundle: dict[str, str]) -> Any:
        """Update ``handle`` with ``bundle``, or show it in a new display; returns the handle."""
        self.bytes_sent += sum(len(v) for v in bundle.values())
        if handle is not None:
            handle.update(bundle, raw=True)
            return handle
        from IPython.display import display

        handle = display(bundle, raw=True, display_id=True)
        self._live_handles.append(handle)
        return handle

    # --- approval ---------------------------------------------------------------------

    @property
    def can_ask(self) -> bool:
        """True if Run / Deny buttons can be clicked in this cell while it runs."""
        return self.surface == "widget" and not self._finished

    async def ask_approval(self, call: ToolCall) -> bool:
        """Run / Deny buttons under the call's card; True once Run is clicked.

        Where buttons cannot be clicked (see :attr:`can_ask`) the answer is no at
        once: a call is never left waiting for a click that cannot come. A Stop
        while waiting cancels this (the loop's doing), and the buttons go away.
        """
        card = self.parts.waiting_for_approval(call.id, call.name, call.arguments)
        if card is not None:
            self._mark(card)
        if not self.can_ask:
            return False
        import ipywidgets as w
        from IPython.display import display

        loop = self._loop
        decision: asyncio.Future[bool] = loop.create_future()

        def decide(value: bool) -> None:  # a click, possibly on a subshell's thread
            def settle() -> None:
                if not decision.done():
                    decision.set_result(value)

            loop.call_soon_threadsafe(settle)

        question = w.HTML(
            '<span class="pk-approve-question">Run <strong>'
            f"{html.escape(call.name)}</strong> <code>{html.escape(one_line(call.arguments))}"
            "</code>?</span>"
        )
        run = w.Button(description="Run", button_style="success", icon="play",
                       tooltip=f"Run {call.name} with these arguments",
                       layout=w.Layout(width="auto"))  # fmt: skip
        deny = w.Button(description="Deny", icon="ban",
                        tooltip="Do not run it; the model is told it was denied",
                        layout=w.Layout(width="auto"))  # fmt: skip
        run.add_class("pk-approve-run")
        deny.add_class("pk-approve-deny")
        run.on_click(lambda _b: decide(True))
        deny.on_click(lambda _b: decide(False))
        box = w.HBox([question, run, deny], layout=w.Layout(align_items="center"))
        box.add_class("pk-approve")
        view = {"version_major": 2, "version_minor": 0, "model_id": box.model_id}
        handle = display(
            {WIDGET_MIME: view, "text/plain": HINT_APPROVE_NO_WIDGETS}, raw=True, display_id=True
        )
        outcome = "not decided (the turn ended)"
        try:
            approved = await decision
            outcome = "run" if approved else "denied"
            return approved
        finally:
            try:
                handle.update({"text/plain": f"{call.name}: {outcome}"}, raw=True)
            except Exception:
                logger.debug("could not update the approval prompt", exc_info=True)
            close_widgets((run, deny, question, box))

    # --- parts: reasoning and tool cards ------------------------------------------------

    def _take_display(self, part: Part) -> None:
        """Give ``part`` a display of its own (the first part takes the answer's)."""
        if id(part) in self._handles or self.surface not in ("widget", "display"):
            return
        if not self._shown:
            return
        if self._free_handle is not None:
            handle, self._free_handle = self._free_handle, None
        else:
            from IPython.display import display

            handle = display({"text/plain": ""}, raw=True, display_id=True)
        self._handles[id(part)] = handle

    def _part_closed(self, part: Part | None) -> None:
        """A Thinking section closed (something else follows): show it collapsed now."""
        if part is None:
            return
        if part not in self._dirty:
            self._dirty.append(part)
        self._flush_parts()

    def _mark(self, part: Part) -> None:
        """Re-render ``part`` now, or within ``interval`` (at most 20 renders a second)."""
        if part not in self._dirty:
            self._dirty.append(part)
        now = self._loop.time()
        if self._parts_last is None or now - self._parts_last >= self.interval:
            self._flush_parts()
        elif self._parts_timer is None:
            self._parts_timer = self._loop.call_at(
                self._parts_last + self.interval, self._on_parts_timer
            )

    def _on_parts_timer(self) -> None:
        self._parts_timer = None
        if not self._finished:
            self._flush_parts()

    def _flush_parts(self) -> None:
        if self._parts_timer is not None:
            self._parts_timer.cancel()
            self._parts_timer = None
        self._parts_last = self._loop.time()
        dirty, self._dirty = self._dirty, []
        if self.surface == "text":
            self._print_parts(dirty)
            return
        if self.surface == "none":
            return
        now = self.parts.clock()
        for part in dirty:
            handle = self._handles.get(id(part))
            if handle is None:
                continue
            self.updates += 1
            plain = part_plain(part, live=True, now=now)
            bundle = {"text/plain": plain}
            if self.format != "text":
                bundle["text/markdown"] = part_markdown(part, live=True, now=now)
            handle.update(bundle, raw=True)
        if dirty:
            self._show_status(self._status_text())

    def _print_parts(self, dirty: list[Part]) -> None:
        """In a terminal: one line per Thinking section and per tool call, once each is done."""
        for part in dirty:
            done = (isinstance(part, ThinkingBlock) and part.done) or (
                isinstance(part, ToolCard) and part.done
            )
            if not done or id(part) in self._handles:
                if not done:
                    self._dirty.append(part)  # printed when it is done
                continue
            self._handles[id(part)] = None  # printed
            if isinstance(part, ThinkingBlock) and not part.text.strip():
                continue
            self._throttle.close()
            before = "" if self._printed == 0 or self.text.endswith("\n") else "\n"
            sys.stdout.write(before + part_plain(part) + "\n")
            sys.stdout.flush()

    def _on_tick(self) -> None:
        self._ticker = None
        if self._finished:
            return
        self._status_at = self._loop.time()
        # Open Thinking sections and running tools show how long they have lasted.
        for part in self.parts.blocks:
            if (isinstance(part, ThinkingBlock) and not part.done) or (
                isinstance(part, ToolCard) and part.state == "running"
            ):
                self._mark(part)
        self._show_status(self._status_text())
        self._ticker = self._loop.call_later(self.tick, self._on_tick)

    def _status_text(self) -> str:
        line = ""
        if self.status is not None:
            try:
                line = self.status()
            except Exception:
                logger.debug("status callable failed", exc_info=True)
        extra = [part for part in (self.note, self._hint()) if part]
        return "\n".join([line, *extra]) if extra else line

    def _hint(self) -> str:
        return display_hint() if self.surface == "display" else ""

    def _show_status(self, line: str) -> None:
        if line == self._last_status:
            return
        self._last_status = line
        if self._status_widget is not None:
            self._status_widget.value = _status_html(line)
        elif self._status_handle is not None:
            self._status_handle.update({"text/plain": line}, raw=True)

    def _show_widget(self) -> None:
        import ipywidgets as w
        from IPython.display import display

        self._button = w.Button(
            description="Stop",
            icon="stop",
            tooltip="Stop the answer here (the text so far is kept)",
            layout=w.Layout(width="auto"),
        )
        self._button.add_class("pk-stop")
        self._button.on_click(self._clicked)
        # The look is set once (style and layout); each update sends just the words.
        self._status_widget = w.HTML(
            _status_html(self._status_text()),
            style={
                "font_size": "var(--jp-ui-font-size1, 13px)",
                "text_color": "var(--jp-ui-font-color2, #616161)",
            },
            layout=w.Layout(padding="0 0 0 0.5em"),
        )
        self._status_widget.add_class("pk-status")
        self._root = w.HBox(
            [self._button, self._status_widget], layout=w.Layout(align_items="center")
        )
        self._root.add_class("pk-live")
        # The widget-view type, which nbval skips (batch runs have no live view at all),
        # and a plain-text fallback: a front end without a widget manager shows the
        # hint instead of a blank (the answer below is a plain display either way).
        view = {"version_major": 2, "version_minor": 0, "model_id": self._root.model_id}
        display({WIDGET_MIME: view, "text/plain": HINT_NO_WIDGETS}, raw=True)

    def _clicked(self, button: Any) -> None:
        # May run on a subshell's thread: only flag, relabel, and call on_stop,
        # which must be thread-safe (Stream.stop() is).
        if self.stop_clicked:
            return
        self.stop_clicked = True
        button.disabled = True
        button.description = "Stopping…"
        if self.on_stop is not None:
            self.on_stop()


class _Pacer:
    """When to update: the first text at once, then at most once per ``interval``.

    Like :class:`~pk_notebook.runtime.text.Throttle`, but ``flush(last)`` gets no
    text (the incremental view keeps its own) and the text is joined only when
    :attr:`text` is read, so an update costs nothing proportional to the answer.
    """

    def __init__(self, flush: Callable[[bool], None], interval: float) -> None:
        self._flush = flush
        self.interval = interval
        self._parts: list[str] = []
        self._dirty = False
        self._last: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.flushes = 0

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def push(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self.poke()

    def poke(self) -> None:
        """Something is waiting to be shown: update now or at the next slot."""
        self._dirty = True
        now = self._loop.time()
        if self._last is None or now - self._last >= self.interval:
            self._emit(now, False)
        elif self._handle is None:
            self._handle = self._loop.call_at(self._last + self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        if self._dirty:
            self._emit(self._loop.time(), False)

    def _emit(self, now: float, last: bool) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._dirty = False
        self._last = now
        self.flushes += 1
        self._flush(last)

    def close(self, flush: bool = True) -> str:
        """Stop the timer; with ``flush``, show everything still waiting. Returns the text."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._dirty and flush:
            self._emit(self._loop.time(), True)
        self._dirty = False
        return self.text


def _status_html(line: str) -> str:
    return html.escape(line).replace("\n", "<br>")
