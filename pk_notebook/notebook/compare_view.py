"""``%%stream -m A -m B ...``: several models answer one prompt, side by side, live.

One column per model (a CSS grid that wraps: on a narrow screen the columns
stack), each with its label, its own Stop button and status line, and the
answer growing below; a Stop-all button above. Each answer grows the way the
single-model view does (:mod:`.blocks`): finished blocks are rendered once and
appended, only the unfinished tail is re-rendered, at most 20 updates a second
for all columns together. The columns hold the chat's safe HTML renderer's
output (:func:`~pk_notebook.notebook.markdown.render_markdown`): raw HTML
inert, dangerous links dead, math spans kept as their TeX source.

Math (decision): the columns are ipywidgets ``HTMLMath`` views, so JupyterLab
typesets ``$...$`` / ``$$...$$`` in them while the answers stream, as it does in
the single-model view. MathJax reads the page's text, not our Markdown, so the
HTML is first made safe *for MathJax* (:func:`mathjax_html`): only the math
spans the renderer found are left to typeset; every other ``$`` and ``\\``
(an escaped ``\\$5``, a stray dollar, an unclosed opener) goes in a
``mathjax_ignore`` span, so MathJax cannot pair it with anything, and a math span
using TeX that makes links, styles or loads code (``\\href``, ``\\url``,
``\\style``, ``\\require``, ...) is not typeset either (shown as source), since
JupyterLab's MathJax would turn ``\\href{javascript:...}`` into a live link. The
unfinished tail is Markdown from :meth:`~.blocks.BlockSplitter.tail_text`, whose
:func:`~.blocks.escape_open_math` keeps an opener without its closing delimiter
out of the math spans, so it reaches MathJax only as an ignored character: a
formula is typeset once it is complete. The final output's HTML goes through
the same :func:`mathjax_html` (JupyterLab typesets ``text/html`` outputs too).

Reasoning: a model's thinking chunks show in its column as a collapsible
Thinking section (:func:`~.parts_view.thinking_html`, a ``<details>`` element),
open while the model thinks and closed (never re-rendered again, so a reader's
click sticks) once its answer text starts. The final output shows each model's
reasoning as one collapsed ``<details>`` section above its answer, with its
length and no duration (byte-stable).

When every model has ended, the live view is replaced (``clear_output(wait=True)``)
by one ``display_data``: the answers side by side (``text/html``, a grid that
stacks on narrow screens) with the same content as Markdown (``text/markdown``,
one ``### label`` section per model) and plain text, then a summary row per
model with the figures that do not depend on the clock: tokens, cost, finish
reason.

Timings and nbval (decision): nbval (0.11) compares every output's ``data`` by
MIME type, except the types in its ``skip_compare`` list: output ``metadata``,
``traceback``, ``execution_count`` and the like, ``image/png`` and
``image/jpeg`` (unless ``--nbdime``) and ``application/vnd.jupyter.widget-view+json``
("Model IDs are random"); outputs are grouped by MIME type, so an output whose
only type is skipped is not compared at all, not even counted. The timings
(time to first chunk, tokens/s, total time) change on every run, so they are
not in the ``display_data`` above (whose bytes are then the same on every run
under the mock provider, and nbval checks it like any other cell) but in a
second output right below it: an ipywidgets ``HTML`` table displayed with the
widget-view type only, which nbval skips. The user sees it below the answers
wherever widgets display (JupyterLab, Notebook 7, VS Code, Colab), even where a
Stop button cannot work; it is left open when the live view closes. A notebook
reopened later shows it only if the widget state was saved (JupyterLab: Save
Widget State Automatically), otherwise JupyterLab says the widget model is not
found there. Batch runs (nbclient, nbval, papermill: nobody watches) do not
show it, and where ipywidgets is missing the timings are only in the live status
lines while the models stream. Every timing is in ``-o VAR`` (``Result.time_to_first_chunk``,
``Result.duration``, ``Result.tokens_per_second``). Rejected: a sanitize regex
for nbval (the saved bytes still change, and every user's nbval needs it); output
``metadata`` (nbval skips it, but no front end shows it); rounding the mock's
timings (a run near a rounding edge still flips).

Where a Stop button cannot work (no ipywidgets, ipykernel < 7.4) the cell shows
one status line per model while they stream (Kernel > Interrupt stops them all)
and the answers at the end; batch runs show only the final output.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from IPython.core.error import UsageError

from ..runtime.compare import Comparison, compare
from ..runtime.errors import ConfigurationError, redact
from ..runtime.pipeline import Pipeline
from ..runtime.types import UNSET, ProviderConfig, Result, StreamStatus
from .blocks import BlockSplitter
from .comms import close_widgets
from .defaults import defaults
from .interpolate import Substitution, describe_substitutions
from .live import (
    FINISHED_PER_UPDATE,
    HINT_NO_WIDGETS,
    WIDGET_MIME,
    detect_surface,
    display_hint,
    widgets_available,
)
from .markdown import escape_markdown, render_markdown, safe_markdown
from .options import CellOptions, known_providers, usage_error
from .parts_view import (
    ThinkingBlock,
    TurnParts,
    thinking_html,
    thinking_markdown,
    thinking_plain,
)
from .status import Note, format_status, notes_for, status_label

__all__ = [
    "CompareRun",
    "CompareView",
    "compare_bundle",
    "mathjax_html",
    "resolve_models",
    "split_models",
    "summary_row",
    "timing_row",
    "timings_html",
    "timings_plain",
]

logger = logging.getLogger("pk_notebook")

#: a column's finished HTML goes into one widget until it holds this many characters
SEGMENT_CHARS = 8_000


# --- which models -----------------------------------------------------------------------


def split_models(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """``-m a -m b,c`` -> ``("a", "b", "c")`` (repeatable, or a comma list)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    found: list[str] = []
    for value in values:
        found += [part.strip() for part in value.split(",") if part.strip()]
    return tuple(found)


def resolve_models(
    models: Sequence[str], options: CellOptions, namespace: Mapping[str, Any]
) -> dict[str, tuple[Pipeline, ProviderConfig | None]]:
    """Each ``-m`` value -> (pipeline, config), labelled as written.

    A value is, in this order: a notebook variable holding a ``Pipeline``; a
    provider spec (``openai:gpt-4o-mini``, ``mock``, ``mock:other``); else a
    model name of the cell's provider (``-p``, or the notebook's default).
    """
    if options.pipeline:
        raise UsageError(
            "--pipeline goes with one model; to compare pipelines, name them with -m: "
            "%%stream -m pipe_a -m pipe_b"
        )
    base = options.config or ProviderConfig()
    known: set[str] | None = None
    resolved: dict[str, tuple[Pipeline, ProviderConfig | None]] = {}
    for value in models:
        if value in resolved:
            raise UsageError(f"-m {value} is given twice")
        candidate = namespace.get(value) if value.isidentifier() else None
        if isinstance(candidate, Pipeline):
            if candidate.closed:
                raise UsageError(f"-m {value}: that pipeline has been shut down")
            resolved[value] = (candidate, options.config)
            continue
        if known is None:
            known = known_providers()
        name = value.partition(":")[0].strip().lower()
        try:
            if ":" in value or name in known:
                if name not in known:
                    raise UsageError(
                        f"-m {value}: unknown provider {name!r}: choose one of "
                        f"{', '.join(sorted(known))}, or name a Pipeline variable"
                    )
                pipe = defaults().pipeline_for(value)
                resolved[value] = (pipe, options.config)
            else:
                pipe = defaults().pipeline_for(options.provider)
                resolved[value] = (pipe, replace(base, model=value))
        except ConfigurationError as exc:
            raise UsageError(f"-m {value}: {redact(str(exc))}") from None
    return resolved


# --- math: what MathJax may typeset -------------------------------------------------------

#: MathJax (3: JupyterLab, Notebook 7; 2: the classic notebook) skips an element with these
IGNORE_CLASSES = "mathjax_ignore tex2jax_ignore"
_HTML_PARTS = re.compile(
    r'<span class="(?P<kind>pk-math[^"]*)">(?P<tex>[^<]*)</span>'
    r"|<pre[\s>][\s\S]*?</pre>|<code[\s>][\s\S]*?</code>"
    r"|<[^>]*>"
    r"|(?P<text>[^<]+)"
)
# What MathJax reads as the start of math in text: dollars and backslashes (``\(``,
# ``\[``, ``\begin{``, ``\ref{``), also written as character references.
_STRAY = re.compile(r"\$|\\|&(?:#0*36|#x0*24|dollar|#0*92|#x0*5c|bsol);", re.IGNORECASE)
# TeX that makes links, styles, ids or loads code once typeset.
_RISKY_TEX = re.compile(
    r"\\(?:href|url|class|cssId|style|data|html|require|unicode|mmlToken)(?![A-Za-z])"
)


def mathjax_html(rendered: str) -> str:
    """``rendered`` (from :func:`render_markdown`) made safe to typeset (see the module docstring).

    Only the renderer's math spans are typeset; any other ``$`` or backslash in
    the text is wrapped in an ignored span, and a math span with risky TeX is
    ignored whole. Code is left as it is (MathJax skips ``code`` and ``pre``).
    Nothing of the answer is added or removed: only ``<span>`` wrappers.
    """

    def one(match: re.Match[str]) -> str:
        if match["kind"] is not None:
            if _RISKY_TEX.search(html.unescape(match["tex"])):
                return f'<span class="{match["kind"]} {IGNORE_CLASSES}">{match["tex"]}</span>'
            return match[0]
        if match["text"] is not None:
            return _STRAY.sub(lambda m: f'<span class="{IGNORE_CLASSES}">{m[0]}</span>', match[0])
        return match[0]

    if not any(c in rendered for c in "$\\&"):
        return rendered
    return _HTML_PARTS.sub(one, rendered)


def _typeset_markdown(text: str) -> str:
    return mathjax_html(render_markdown(text))


# --- the final output -------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def summary_row(label: str, result: Result) -> dict[str, str]:
    """One model's figures that do not depend on the clock: tokens, cost, finish reason.

    These are in the saved output (byte-stable under the mock provider); the
    timings are in :func:`timing_row`.
    """
    usage = result.usage
    tokens = "-"
    if usage is not None:
        tokens = f"≈{usage.output_tokens}" if usage.estimated else str(usage.output_tokens)
    cost = "-" if result.cost is None else f"${result.cost:.6f}".rstrip("0").rstrip(".")
    if result.status is StreamStatus.FINISHED:
        finish = result.finish_reason or "finished"
    else:
        finish = status_label(result.status)
    return {"model": label, "tokens": tokens, "cost": cost, "finish": finish}


def timing_row(label: str, result: Result) -> dict[str, str]:
    """One model's timings: time to first chunk, tokens/s while streaming, total time."""
    usage = result.usage
    rate = "-"
    if usage is not None:
        streaming = result.duration - (result.time_to_first_chunk or 0.0)
        if streaming > 0 and usage.output_tokens:
            rate = f"{usage.output_tokens / streaming:.0f}"
    return {
        "model": label,
        "first chunk": _seconds(result.time_to_first_chunk),
        "tokens/s": rate,
        "total": _seconds(result.duration),
    }


def _table_html(rows: Sequence[Mapping[str, str]], css_class: str, caption: str = "") -> str:
    if not rows:
        return ""
    heads = list(rows[0])
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[h])}</td>" for h in heads) + "</tr>" for r in rows
    )
    caption_html = (
        f'<caption style="text-align:left">{html.escape(caption)}</caption>' if caption else ""
    )
    return (
        f'<table class="{css_class}">{caption_html}<thead><tr>{cells}</tr></thead>'
        f"<tbody>{body_rows}</tbody></table>"
    )


def _table_plain(rows: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(" · ".join(f"{h} {v}" for h, v in r.items()) for r in rows)


def timings_html(results: Mapping[str, Result]) -> str:
    """The timings table shown below the final output (not saved for nbval to compare)."""
    rows = [timing_row(label, result) for label, result in results.items()]
    return _table_html(rows, "pk-compare-summary pk-compare-timings", "Timings of this run")


def timings_plain(results: Mapping[str, Result]) -> str:
    return _table_plain([timing_row(label, result) for label, result in results.items()])


def _reasoning_block(result: Result) -> ThinkingBlock | None:
    """The model's reasoning as one closed section (the final output has no durations)."""
    if not result.reasoning.strip():
        return None
    return ThinkingBlock(text=result.reasoning, started=0.0, ended=0.0)


def compare_bundle(
    results: Mapping[str, Result], notes: Mapping[str, Sequence[Note]]
) -> dict[str, str]:
    """The comparison's one final output: the answers side by side, then the summary.

    Deterministic for deterministic results: no timings (see the module docstring),
    each model's reasoning collapsed with its length only.
    """
    rows = [summary_row(label, result) for label, result in results.items()]
    heads = list(rows[0]) if rows else []
    md_parts, html_cols, plain_parts = [], [], []
    for label, result in results.items():
        label_notes = notes.get(label, ())
        thinking = _reasoning_block(result)
        body = safe_markdown(result.text) if result.text.strip() else ""
        note_md = "\n>\n".join(n.markdown() for n in label_notes)
        thinking_md = thinking_markdown(thinking) if thinking is not None else ""
        md_parts.append(
            "\n\n".join(
                p
                for p in (f"### {escape_markdown(label)}", thinking_md, body.strip("\n"), note_md)
                if p
            )
        )
        note_html = "".join(
            f'<p class="pk-compare-note">{html.escape(n.plain())}</p>' for n in label_notes
        )
        thinking_part = thinking_html(thinking) if thinking is not None else ""
        html_cols.append(
            '<div class="pk-compare-col" style="min-width:0;overflow-wrap:anywhere">'
            f'<h4 class="pk-compare-label" style="margin-top:0">{html.escape(label)}</h4>'
            f"{mathjax_html(thinking_part + render_markdown(result.text))}{note_html}</div>"
        )
        plain = "\n".join(n.plain() for n in label_notes)
        thinking_line = thinking_plain(thinking) + "\n" if thinking is not None else ""
        plain_parts.append(
            f"[{label}]\n{thinking_line}{result.text}" + (f"\n{plain}" if plain else "")
        )
    table_md = ""
    if rows:
        table_md = "\n".join(
            [
                "| " + " | ".join(heads) + " |",
                "|" + "|".join("---" for _ in heads) + "|",
                *("| " + " | ".join(escape_markdown(r[h]) for h in heads) + " |" for r in rows),
            ]
        )
    grid = (
        '<div class="pk-compare pk-compare-final" style="display:grid;'
        "grid-template-columns:repeat(auto-fit,minmax(15rem,1fr));gap:0.5rem 1.5rem;"
        'align-items:start">' + "".join(html_cols) + "</div>"
    )
    return {
        "text/html": grid + _table_html(rows, "pk-compare-summary"),
        "text/markdown": "\n\n".join([*md_parts, table_md]).strip("\n"),
        "text/plain": "\n\n".join([*plain_parts, _table_plain(rows)]).strip("\n"),
    }


# --- the live view ----------------------------------------------------------------------


@dataclass(eq=False)
class _Column:
    label: str
    splitter: BlockSplitter = field(default_factory=BlockSplitter)
    backlog: deque[str] = field(default_factory=deque)
    dirty: bool = False
    ended: bool = False
    text_chars: int = 0
    parts: TurnParts = field(default_factory=TurnParts)
    thinking: ThinkingBlock | None = None  # the open Thinking section, re-rendered live
    thinking_widget: Any = None
    # widgets
    box: Any = None
    button: Any = None
    status: Any = None
    body: Any = None
    segment: Any = None  # the HTML widget finished blocks go into now
    segment_html: str = ""
    tail: Any = None
    widgets: list[Any] = field(default_factory=list)


class CompareView:
    """Columns of growing answers in the current cell (see the module docstring).

    Parameters:
        labels: one column per label, in this order.
        surface: ``widget``, ``display``, ``text`` or ``none`` (``auto`` detects it).
        on_stop: ``on_stop(label)`` for a column's Stop, ``on_stop(None)`` for Stop all;
            may be called from another thread.
        status: ``status(label)`` is a column's status line.
    """

    def __init__(
        self,
        labels: Sequence[str],
        *,
        surface: str = "auto",
        on_stop: Callable[[str | None], None] | None = None,
        status: Callable[[str], str] | None = None,
        interval: float = 0.05,
        tick: float = 0.5,
        shell: Any = None,
        note: str = "",
    ) -> None:
        self.surface = detect_surface(shell) if surface == "auto" else surface
        self.columns = {label: _Column(label) for label in labels}
        self.on_stop = on_stop
        self.status = status
        self.interval = interval
        self.tick = tick
        self.note = note
        self.updates = 0
        self.bytes_sent = 0
        self._shell = shell
        self._loop = asyncio.get_running_loop()
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._root: Any = None
        self._stop_all: Any = None
        self._handle: Any = None  # the display surface's status display
        self._finished = False
        self._shown = False
        self._widgets: list[Any] = []
        self.timings: Any = None  # the timings table left below the final output

    # --- lifecycle ------------------------------------------------------------------

    def show(self) -> CompareView:
        if self._shown:
            return self
        self._shown = True
        if self.surface == "widget":
            try:
                self._show_widgets()
            except Exception:
                logger.warning("the comparison's widgets could not be shown", exc_info=True)
                self.surface = "display"
        if self.surface == "display":
            from IPython.display import display

            self._handle = display({"text/plain": self._plain_status()}, raw=True, display_id=True)
        if self.surface in ("widget", "display") and self.tick:
            self._ticker = self._loop.call_later(self.tick, self._on_tick)
        return self

    def push(self, label: str, text: str) -> None:
        column = self.columns[label]
        if not text or column.ended or self._finished:
            return
        first = column.text_chars == 0 and not column.parts.blocks
        _, closed = column.parts.add_text(text)
        if closed is not None:
            self._close_thinking(column)
        column.splitter.feed(text)
        column.text_chars += len(text)
        column.dirty = True
        self._schedule()
        if first:
            self._refresh_status()  # "waiting for the first chunk" no more

    def push_reasoning(self, label: str, text: str) -> None:
        """Reasoning for ``label``: its column's Thinking section, never the answer."""
        column = self.columns[label]
        if not text or column.ended or self._finished:
            return
        first = not column.parts.blocks
        block = column.parts.add_reasoning(text)
        if block is not column.thinking:
            self._open_thinking(column, block)
        column.dirty = True
        self._schedule()
        if first:
            self._refresh_status()

    def ended(self, label: str) -> None:
        """``label``'s stream has ended: show the rest of its text, no more Stop for it."""
        column = self.columns[label]
        column.dirty = True
        if column.thinking is not None:  # it ended while thinking (stopped, failed)
            column.parts.finish()
            self._close_thinking(column)
        self._render_column(column, last=True)
        column.ended = True
        if column.button is not None:
            column.button.disabled = True
            column.button.description = "Ended"
        self._refresh_status()
        if self._stop_all is not None and all(c.ended for c in self.columns.values()):
            self._stop_all.disabled = True

    def finish(
        self, bundle: Mapping[str, str], results: Mapping[str, Result] | None = None
    ) -> None:
        """Replace the live view with the final output (one ``display_data``), and
        show ``results``' timings below it where nbval does not look (see the module
        docstring)."""
        self._finished = True
        for handle in (self._timer, self._ticker):
            if handle is not None:
                handle.cancel()
        self._timer = self._ticker = None
        if self.surface == "text":
            import sys

            timings = "\n" + timings_plain(results) if results else ""
            sys.stdout.write(bundle.get("text/plain", "") + timings + "\n")
            sys.stdout.flush()
            return
        from IPython.display import clear_output, display

        if self.surface in ("widget", "display"):
            clear_output(wait=True)
        display(dict(bundle), raw=True)
        self.close()
        if results and self.surface in ("widget", "display"):
            self._show_timings(results)

    def _show_timings(self, results: Mapping[str, Result]) -> None:
        """The timings as a widget-only output: seen by the user, skipped by nbval.

        No ``text/plain`` fallback: it would be compared by nbval, and a batch run
        (which has no such output) would then differ from the saved notebook.
        The widget is not closed with the live view, or its view would vanish.
        """
        if not widgets_available():
            return
        try:
            import ipywidgets as w
            from IPython.display import display

            table = w.HTML(timings_html(results))
            table.add_class("pk-compare-timings")
            view = {"version_major": 2, "version_minor": 0, "model_id": table.model_id}
            display({WIDGET_MIME: view}, raw=True)
            self.timings = table
        except Exception:
            logger.warning("the comparison's timings could not be shown", exc_info=True)

    def close(self) -> None:
        close_widgets(self._widgets)
        self._widgets.clear()
        self._root = None

    # --- updates --------------------------------------------------------------------

    def _schedule(self) -> None:
        now = self._loop.time()
        if self._last is None or now - self._last >= self.interval:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._last + self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._finished:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last = self._loop.time()
        self.updates += 1
        again = False
        for column in self.columns.values():
            if column.dirty and not column.ended:
                again = self._render_column(column, last=False) or again
        if again:
            self._schedule()

    def _render_column(self, column: _Column, *, last: bool) -> bool:
        """Render what is new in ``column``; True if finished text is still waiting."""
        if not column.dirty:
            return False
        column.dirty = False
        if self.surface != "widget" or column.body is None:
            column.splitter.take()  # keep the splitter's memory small; text shows at the end
            return False
        if column.thinking is not None and column.thinking_widget is not None:
            now = column.parts.clock()
            value = mathjax_html(thinking_html(column.thinking, live=True, now=now))
            if column.thinking_widget.value != value:
                column.thinking_widget.value = value
                self.bytes_sent += len(value)
        column.backlog.extend(column.splitter.take())
        size = 0
        batch: list[str] = []
        while column.backlog and (size < FINISHED_PER_UPDATE or last):
            piece = column.backlog.popleft()
            batch.append(piece)
            size += len(piece)
        if batch:
            self._append_finished(column, _typeset_markdown("".join(batch)))
        if column.backlog:
            column.dirty = True
            return True
        # tail_text() escapes an unclosed math opener (blocks.escape_open_math), so it
        # is no math span and mathjax_html makes it an ignored character.
        tail_html = _typeset_markdown(column.splitter.tail_text())
        if column.tail.value != tail_html:
            column.tail.value = tail_html
            self.bytes_sent += len(tail_html)
        return False

    def _insert(self, column: _Column, widget: Any) -> None:
        """Add ``widget`` to ``column``'s body, just above its tail."""
        self._widgets.append(widget)
        column.body.children = (*column.body.children[:-1], widget, column.tail)

    def _open_thinking(self, column: _Column, block: ThinkingBlock) -> None:
        """A new stretch of reasoning: its own section below what the column shows."""
        column.thinking = block
        if self.surface != "widget" or column.body is None:
            return
        import ipywidgets as w

        if column.splitter.fed:  # text came first: show all of it above the section
            column.dirty = True
            self._render_column(column, last=True)
            rest = column.splitter.tail_text()
            if rest.strip():
                self._append_finished(column, _typeset_markdown(rest))
            column.splitter = BlockSplitter()
            column.tail.value = ""
        column.segment = None  # text after the section goes below it
        widget = column.thinking_widget = w.HTMLMath("")
        widget.add_class("pk-compare-thinking")
        self._insert(column, widget)

    def _close_thinking(self, column: _Column) -> None:
        """The reasoning stretch ended: render it closed, once; never touched again."""
        block, column.thinking = column.thinking, None
        widget, column.thinking_widget = column.thinking_widget, None
        if block is None or widget is None or self._finished:
            return
        value = mathjax_html(thinking_html(block, live=True, now=column.parts.clock()))
        widget.value = value
        self.bytes_sent += len(value)

    def _append_finished(self, column: _Column, piece_html: str) -> None:
        import ipywidgets as w

        if column.segment is None or len(column.segment_html) >= SEGMENT_CHARS:
            column.segment = w.HTMLMath("")
            column.segment.add_class("pk-compare-piece")
            column.segment_html = ""
            self._insert(column, column.segment)
        column.segment_html += piece_html
        column.segment.value = column.segment_html
        self.bytes_sent += len(column.segment_html)

    # --- status -----------------------------------------------------------------------

    def _on_tick(self) -> None:
        self._ticker = None
        if self._finished:
            return
        self._refresh_status()
        self._ticker = self._loop.call_later(self.tick, self._on_tick)

    def _status_of(self, label: str) -> str:
        if self.status is None:
            return ""
        try:
            return self.status(label)
        except Exception:
            logger.debug("status callable failed", exc_info=True)
            return ""

    def _plain_status(self) -> str:
        lines = [f"{label}: {self._status_of(label)}" for label in self.columns]
        extra = [p for p in (self.note, display_hint() if self.surface == "display" else "") if p]
        return "\n".join(lines + extra)

    def _refresh_status(self) -> None:
        if self.surface == "widget":
            for column in self.columns.values():
                if column.status is not None:
                    value = _status_html(self._status_of(column.label))
                    if column.status.value != value:
                        column.status.value = value
        elif self.surface == "display" and self._handle is not None:
            self._handle.update({"text/plain": self._plain_status()}, raw=True)

    # --- widgets ----------------------------------------------------------------------

    def _show_widgets(self) -> None:
        import ipywidgets as w
        from IPython.display import display

        boxes = []
        for column in self.columns.values():
            label = w.HTML(f"<strong>{html.escape(column.label)}</strong>")
            button = w.Button(
                description="Stop",
                icon="stop",
                tooltip=f"Stop {column.label}'s answer here (the text so far is kept)",
                layout=w.Layout(width="auto"),
            )
            button.add_class("pk-compare-stop")
            button.on_click(self._clicker(column.label))
            status = w.HTML(_status_html(self._status_of(column.label)))
            status.add_class("pk-status")
            head = w.HBox([label, button], layout=w.Layout(align_items="center"))
            tail = w.HTMLMath("")
            tail.add_class("pk-compare-tail")
            body = w.VBox([tail], layout=w.Layout(width="100%"))
            body.add_class("pk-compare-body")
            box = w.VBox([head, status, body], layout=w.Layout(min_width="0"))
            box.add_class("pk-compare-col")
            column.box, column.button, column.status, column.body, column.tail = (
                box,
                button,
                status,
                body,
                tail,
            )
            self._widgets += [label, button, status, head, tail, body, box]
            boxes.append(box)
        grid = w.GridBox(
            boxes,
            layout=w.Layout(
                grid_template_columns="repeat(auto-fit, minmax(15rem, 1fr))",
                grid_gap="0.5rem 1.5rem",
                width="100%",
            ),
        )
        grid.add_class("pk-compare")
        stop_all = w.Button(
            description="Stop all",
            icon="stop",
            tooltip="Stop every answer here (the text so far is kept)",
            layout=w.Layout(width="auto"),
        )
        stop_all.add_class("pk-compare-stop-all")
        stop_all.on_click(self._clicker(None))
        note = w.HTML(_status_html(self.note)) if self.note else None
        top = w.HBox([stop_all, *([note] if note else [])], layout=w.Layout(align_items="center"))
        root = w.VBox([top, grid], layout=w.Layout(width="100%"))
        root.add_class("pk-compare-live")
        self._stop_all, self._root = stop_all, root
        self._widgets += [stop_all, *([note] if note else []), top, grid, root]
        view = {"version_major": 2, "version_minor": 0, "model_id": root.model_id}
        display({WIDGET_MIME: view, "text/plain": HINT_NO_WIDGETS}, raw=True)

    def _clicker(self, label: str | None) -> Callable[[Any], None]:
        def clicked(button: Any) -> None:  # may run on a subshell's thread
            if button.disabled:
                return
            button.disabled = True
            button.description = "Stopping…"
            if self.on_stop is not None:
                self.on_stop(label)

        return clicked


def _status_html(line: str) -> str:
    return (
        '<span style="color: var(--jp-ui-font-color2, #616161); white-space: pre-line; '
        'font-size: var(--jp-ui-font-size1, 13px)">'
        f"{html.escape(line)}</span>"
    )


# --- the cell ---------------------------------------------------------------------------


@dataclass
class CompareRun:
    """One ``%%stream -m A -m B ...`` cell: the same prompt to every model, side by side."""

    shell: Any
    options: CellOptions
    prompt: str
    models: dict[str, tuple[Pipeline, ProviderConfig | None]]
    surface: str
    substitutions: list[Substitution] = field(default_factory=list)
    attachments: tuple[Any, ...] = ()
    comparison: Comparison | None = None
    view: CompareView | None = None
    results: dict[str, Result] = field(default_factory=dict)
    interrupted: bool = False

    @classmethod
    def build(
        cls,
        shell: Any,
        options: CellOptions,
        prompt: str,
        substitutions: list[Substitution],
        attachments: Sequence[Any] = (),
        *,
        sync: bool = False,
    ) -> CompareRun:
        for flag, given in (
            ("--tools", options.tools),
            ("--schema", options.schema),
            ("--dry-run", options.dry_run),
            ("-f code", options.format == "code"),
        ):
            if given:
                raise UsageError(f"{flag} goes with one model, not with a comparison (-m A -m B)")
        namespace = shell.user_ns if shell is not None else {}
        models = resolve_models(options.models, options, namespace)
        surface = options.live
        if sync and surface == "auto":
            surface = detect_surface(shell)
            if surface == "widget":
                surface = "display"  # a blocked cell cannot receive a click
        return cls(shell, options, prompt, models, surface, substitutions, tuple(attachments))

    async def execute(self) -> None:
        """Stream every answer into its column; ``-o VAR`` gets ``{label: Result}``."""
        opts = self.options
        kwargs: dict[str, Any] = {}
        if self.attachments:
            kwargs["attachments"] = self.attachments
        if opts.timeout is not UNSET:
            kwargs["timeout"] = opts.timeout
        if opts.idle_timeout is not UNSET:
            kwargs["idle_timeout"] = opts.idle_timeout
        try:
            cmp = self.comparison = compare(
                {label: pipe for label, (pipe, _) in self.models.items()},
                self.prompt,
                session=opts.session_id,
                configs={label: config for label, (_, config) in self.models.items()},
                **kwargs,
            )
        except ConfigurationError as exc:
            raise usage_error(exc) from None
        view = self.view = CompareView(
            list(self.models),
            surface=self.surface,
            on_stop=cmp.stop,
            status=self.status_line,
            shell=self.shell,
            note=describe_substitutions(self.substitutions),
        )
        view.show()
        try:
            async for event in cmp:
                if event.chunk is not None:
                    if event.chunk.reasoning:
                        view.push_reasoning(event.label, event.chunk.reasoning)
                    if event.chunk.content:
                        view.push(event.label, event.chunk.content)
                else:
                    view.ended(event.label)
        except asyncio.CancelledError:
            # Kernel > Interrupt: every stream has been stopped (their text kept).
            self.interrupted = True
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
        self.results = {label: cmp.results[label] for label in cmp.labels if label in cmp.results}
        notes = {
            label: notes_for(result, cmp.errors.get(label))
            for label, result in self.results.items()
        }
        view.finish(compare_bundle(self.results, notes), self.results)
        if opts.out and self.shell is not None:
            self.shell.user_ns[opts.out] = dict(self.results)
        if self.interrupted:
            from .runner import CellInterrupted

            raise CellInterrupted()

    def status_line(self, label: str) -> str:
        cmp = self.comparison
        if cmp is None:
            return "waiting"
        if label in cmp.results:
            return format_status(cmp.results[label])
        stream = cmp.streams[label]
        if stream.ended:
            return format_status(stream.result)
        return format_status(stream, waiting=True)
