"""``%%stream -m A -m B ...``: several models answer one prompt, side by side, live.

One column per model (a CSS grid that wraps: on a narrow screen the columns
stack), each with its label, its own Stop button and status line, and the
answer growing below; a Stop-all button above. Each answer grows the way the
single-model view does (:mod:`.blocks`): finished blocks are rendered once and
appended, only the unfinished tail is re-rendered, at most 20 updates a second
for all columns together. The columns are ipywidgets ``HTML`` views of the
chat's safe HTML renderer (:func:`~pk_notebook.notebook.markdown.render_markdown`):
raw HTML inert, dangerous links dead, math kept as its TeX source.

When every model has ended, the live view is replaced (``clear_output(wait=True)``)
by one ``display_data``: the answers side by side (``text/html``, a grid that
stacks on narrow screens) with the same content as Markdown (``text/markdown``,
one ``### label`` section per model) and plain text, then a summary row per
model: time to first chunk, tokens/s, tokens, cost, finish reason. The
timings differ from run to run, so a comparison cell's output is not
byte-stable (nbval: mark the cell ``# NBVAL_IGNORE_OUTPUT``).

Where a Stop button cannot work (no ipywidgets, ipykernel < 7.4) the cell shows
one status line per model while they stream (Kernel > Interrupt stops them all)
and the answers at the end; batch runs show only the final output.
"""

from __future__ import annotations

import asyncio
import html
import logging
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
from .defaults import defaults
from .interpolate import Substitution, describe_substitutions
from .live import (
    FINISHED_PER_UPDATE,
    HINT_NO_WIDGETS,
    WIDGET_MIME,
    detect_surface,
    display_hint,
)
from .markdown import escape_markdown, render_markdown, safe_markdown
from .options import CellOptions, usage_error
from .status import Note, format_status, notes_for, status_label

__all__ = ["CompareRun", "CompareView", "compare_bundle", "resolve_models", "split_models"]

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


def _known_providers() -> set[str]:
    from ..providers.registry import available_providers

    return {spec.name for spec in available_providers()}


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
            known = _known_providers()
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


# --- the final output -------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def summary_row(label: str, result: Result) -> dict[str, str]:
    """One model's figures: time to first chunk, tokens/s, tokens, cost, finish reason."""
    usage = result.usage
    tokens = "-"
    rate = "-"
    if usage is not None:
        tokens = f"≈{usage.output_tokens}" if usage.estimated else str(usage.output_tokens)
        streaming = result.duration - (result.time_to_first_chunk or 0.0)
        if streaming > 0 and usage.output_tokens:
            rate = f"{usage.output_tokens / streaming:.0f}"
    cost = "-" if result.cost is None else f"${result.cost:.6f}".rstrip("0").rstrip(".")
    if result.status is StreamStatus.FINISHED:
        finish = result.finish_reason or "finished"
    else:
        finish = status_label(result.status)
    return {
        "model": label,
        "first chunk": _seconds(result.time_to_first_chunk),
        "tokens/s": rate,
        "tokens": tokens,
        "cost": cost,
        "finish": finish,
    }


def compare_bundle(
    results: Mapping[str, Result], notes: Mapping[str, Sequence[Note]]
) -> dict[str, str]:
    """The comparison's one final output: the answers side by side, then the summary."""
    rows = [summary_row(label, result) for label, result in results.items()]
    heads = list(rows[0]) if rows else []
    md_parts, html_cols, plain_parts = [], [], []
    for label, result in results.items():
        label_notes = notes.get(label, ())
        body = safe_markdown(result.text) if result.text.strip() else ""
        note_md = "\n>\n".join(n.markdown() for n in label_notes)
        md_parts.append(
            "\n\n".join(
                p for p in (f"### {escape_markdown(label)}", body.strip("\n"), note_md) if p
            )
        )
        note_html = "".join(
            f'<p class="pk-compare-note">{html.escape(n.plain())}</p>' for n in label_notes
        )
        html_cols.append(
            '<div class="pk-compare-col" style="min-width:0;overflow-wrap:anywhere">'
            f'<h4 class="pk-compare-label" style="margin-top:0">{html.escape(label)}</h4>'
            f"{render_markdown(result.text)}{note_html}</div>"
        )
        plain = "\n".join(n.plain() for n in label_notes)
        plain_parts.append(f"[{label}]\n{result.text}" + (f"\n{plain}" if plain else ""))
    table_md = ""
    table_html = ""
    table_plain = ""
    if rows:
        table_md = "\n".join(
            [
                "| " + " | ".join(heads) + " |",
                "|" + "|".join("---" for _ in heads) + "|",
                *("| " + " | ".join(escape_markdown(r[h]) for h in heads) + " |" for r in rows),
            ]
        )
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        body_rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(r[h])}</td>" for h in heads) + "</tr>" for r in rows
        )
        table_html = (
            f'<table class="pk-compare-summary"><thead><tr>{cells}</tr></thead>'
            f"<tbody>{body_rows}</tbody></table>"
        )
        table_plain = "\n".join(" · ".join(f"{h} {r[h]}" for h in heads) for r in rows)
    grid = (
        '<div class="pk-compare pk-compare-final" style="display:grid;'
        "grid-template-columns:repeat(auto-fit,minmax(15rem,1fr));gap:0.5rem 1.5rem;"
        'align-items:start">' + "".join(html_cols) + "</div>"
    )
    return {
        "text/html": grid + table_html,
        "text/markdown": "\n\n".join([*md_parts, table_md]).strip("\n"),
        "text/plain": "\n\n".join([*plain_parts, table_plain]).strip("\n"),
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
        first = column.text_chars == 0
        column.splitter.feed(text)
        column.text_chars += len(text)
        column.dirty = True
        self._schedule()
        if first:
            self._refresh_status()  # "waiting for the first chunk" no more

    def ended(self, label: str) -> None:
        """``label``'s stream has ended: show the rest of its text, no more Stop for it."""
        column = self.columns[label]
        column.dirty = True
        self._render_column(column, last=True)
        column.ended = True
        if column.button is not None:
            column.button.disabled = True
            column.button.description = "Ended"
        self._refresh_status()
        if self._stop_all is not None and all(c.ended for c in self.columns.values()):
            self._stop_all.disabled = True

    def finish(self, bundle: Mapping[str, str]) -> None:
        """Replace the live view with the final output (one ``display_data``)."""
        self._finished = True
        for handle in (self._timer, self._ticker):
            if handle is not None:
                handle.cancel()
        self._timer = self._ticker = None
        if self.surface == "text":
            import sys

            sys.stdout.write(bundle.get("text/plain", "") + "\n")
            sys.stdout.flush()
            return
        from IPython.display import clear_output, display

        if self.surface in ("widget", "display"):
            clear_output(wait=True)
        display(dict(bundle), raw=True)
        self.close()

    def close(self) -> None:
        for widget in self._widgets:
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
                if part is None:
                    continue
                try:
                    part.close()
                except Exception:
                    logger.debug("could not close %r", part, exc_info=True)
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
        column.backlog.extend(column.splitter.take())
        size = 0
        batch: list[str] = []
        while column.backlog and (size < FINISHED_PER_UPDATE or last):
            piece = column.backlog.popleft()
            batch.append(piece)
            size += len(piece)
        if batch:
            self._append_finished(column, render_markdown("".join(batch)))
        if column.backlog:
            column.dirty = True
            return True
        tail_html = render_markdown(column.splitter.tail_text())
        if column.tail.value != tail_html:
            column.tail.value = tail_html
            self.bytes_sent += len(tail_html)
        return False

    def _append_finished(self, column: _Column, piece_html: str) -> None:
        import ipywidgets as w

        if column.segment is None or len(column.segment_html) >= SEGMENT_CHARS:
            column.segment = w.HTML("")
            column.segment.add_class("pk-compare-piece")
            column.segment_html = ""
            self._widgets.append(column.segment)
            column.body.children = (*column.body.children[:-1], column.segment, column.tail)
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
            head = w.HBox([label, button], layout=w.Layout(align_items="center", gap="0.5em"))
            tail = w.HTML("")
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
        view.finish(compare_bundle(self.results, notes))
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
