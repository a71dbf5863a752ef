"""How the end of an answer is told, in one table for the cell, the chat and the status line.

The status line says ``stopped``, the cell's note says ``■ Stopped: ...`` and the
chat's marker says ``■ stopped`` (its tooltip: why the reply is incomplete):
all three read the same row of :data:`STATUS_TEXT`, so the words and icons
cannot drift apart. :func:`notes_for` builds the notes under an answer that did
not simply finish; :class:`Note` renders one as Markdown or plain text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import PkNotebookError, redact
from ..runtime.stream import Stream
from ..runtime.types import Result, StreamStatus
from .markdown import escape_markdown

__all__ = [
    "STATUS_TEXT",
    "STOPPED_NOTE",
    "Note",
    "StatusText",
    "format_status",
    "note_for",
    "notes_for",
    "status_label",
]


@dataclass(frozen=True)
class StatusText:
    """The words for one stream status."""

    label: str  # the status line and the chat marker: "stopped"
    icon: str = ""  # before the cell's note and the chat marker: "■"
    title: str = ""  # the cell's note: "Stopped:"
    why: str = ""  # the chat marker's tooltip: a sentence


STATUS_TEXT: dict[StreamStatus, StatusText] = {
    StreamStatus.STREAMING: StatusText("streaming"),
    StreamStatus.FINISHED: StatusText("finished"),
    StreamStatus.STOPPED: StatusText(
        "stopped", "■", "Stopped:", "Stopped: the reply is incomplete."
    ),
    StreamStatus.TIMED_OUT: StatusText("timed out", "⚠", "Timed out:", "The reply timed out."),
    StreamStatus.FAILED: StatusText("failed", "⚠", "Failed:", "The reply failed part-way."),
    StreamStatus.TRUNCATED: StatusText(
        "truncated", "⚠", "Truncated:", "The connection ended before the reply did."
    ),
}

# Notes for answers that finished, but not because the model was done.
_FINISH_NOTES = {
    "length": (
        "Cut short:",
        "the answer reached its token limit (finish reason: length); raise --max-tokens.",
    ),
    "content_filter": (
        "Filtered:",
        "the provider withheld the rest of the answer (finish reason: content_filter).",
    ),
}


def status_label(status: StreamStatus) -> str:
    return STATUS_TEXT[status].label


@dataclass(frozen=True)
class Note:
    """A line under the answer: why it is incomplete, or what to watch out for."""

    icon: str
    title: str
    detail: str = ""

    def markdown(self) -> str:
        detail = f" {escape_markdown(self.detail)}" if self.detail else ""
        return f"> {self.icon} **{escape_markdown(self.title)}**{detail}"

    def plain(self) -> str:
        return f"{self.icon} {self.title}" + (f" {self.detail}" if self.detail else "")


def note_for(status: StreamStatus, detail: str = "") -> Note:
    """The note for an answer that ended with ``status`` (not ``finished``)."""
    text = STATUS_TEXT[status]
    return Note(text.icon, text.title, detail)


STOPPED_NOTE = note_for(StreamStatus.STOPPED, "partial answer; the rest was not generated.")


def notes_for(result: Result, error: BaseException | None = None) -> list[Note]:
    """What to say under an answer that did not simply finish (deterministic text)."""
    notes: list[Note] = []
    status = result.status
    if status is StreamStatus.STOPPED:
        notes.append(STOPPED_NOTE if result.text else note_for(status, "before any text arrived."))
    elif status in (StreamStatus.TIMED_OUT, StreamStatus.TRUNCATED, StreamStatus.FAILED):
        notes.append(note_for(status, _message(error or result.error)))
    elif result.finish_reason in _FINISH_NOTES:
        title, detail = _FINISH_NOTES[result.finish_reason]
        notes.append(Note("⚠", title, detail))
    for warning in result.warnings:
        notes.append(Note("⚠", "Note:", redact(warning)))
    return notes


def _message(error: BaseException | None) -> str:
    if error is None:
        return "the answer did not finish."
    if isinstance(error, PkNotebookError):
        return redact(str(error))
    return redact(
        f"unexpected {type(error).__name__}: {error}. "
        "This is a bug in pk_notebook; please report it."
    )


def format_status(source: Stream | Result, *, waiting: bool = False) -> str:
    """``"1.2 s · first chunk 0.05 s · 83 chunks · 83 tokens · 70 tok/s · finished (stop)"``.

    Estimated usage (:mod:`pk_notebook.runtime.tokens`) reads ``≈83 tokens (estimated)``.
    """
    if isinstance(source, Result):
        elapsed, ttfc, chunks = source.duration, source.time_to_first_chunk, source.chunks
        status, finish = source.status, source.finish_reason
        tokens = source.usage.output_tokens if source.usage else None
        estimated = bool(source.usage and source.usage.estimated)
    else:
        elapsed, ttfc, chunks = source.elapsed, source.time_to_first_chunk, source.chunk_count
        status, finish, tokens = source.status, None, None
        estimated = False
    parts = [f"{elapsed:.1f} s"]
    if ttfc is not None:
        parts.append(f"first chunk {ttfc:.2f} s")
    elif waiting:
        parts.append("waiting for the first chunk")
    parts.append(f"{chunks} chunks")
    if tokens is not None:
        # A provider that sent no usage: the count is an estimate, and says so.
        parts.append(f"≈{tokens} tokens (estimated)" if estimated else f"{tokens} tokens")
    rate_base = tokens if tokens is not None else chunks
    if elapsed > 0 and rate_base:
        parts.append(f"{rate_base / elapsed:.0f} {'tok' if tokens is not None else 'chunks'}/s")
    label = status_label(status)
    parts.append(f"{label} ({finish})" if finish else label)
    return " · ".join(parts)
