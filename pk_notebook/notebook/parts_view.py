"""Reasoning and tool calls, shown: a "Thinking" section and one card per tool call.

One model of a turn's visible parts (:class:`TurnParts`), fed chunk by chunk,
and pure renderers over it: Markdown for the ``%%stream`` cell, HTML for the
chat's bubble, plain text for ``text/plain`` and terminals. The parts are kept
in the order they arrived, so a turn reads as it happened::

    ▸ Thinking · 412 characters            (collapsible)
    ✓ get_weather  {"city": "Paris"}       (collapsible card: arguments, result)
    ▸ Thinking · 96 characters
    Take an umbrella: rain is expected in Paris this afternoon.

Rules:

- Reasoning is never mixed into the answer: each stretch of thinking is its own
  ``<details>`` section, open while the model thinks and collapsed as soon as
  something else (answer text, a tool call) follows. Its summary gives its
  length and, live, how long it has lasted.
- Reasoning, arguments and tool output are untrusted text. In Markdown the
  reasoning goes through the same :func:`~pk_notebook.notebook.markdown.safe_markdown`
  as the answer; arguments and outputs are fenced code (a fence longer than any
  run of backticks inside, so nothing can close it); the one-line summaries are
  HTML-escaped, with ``$`` and ``\\`` as entities so that Jupyter's math scan
  never sees them. In HTML (the chat) the reasoning goes through
  :func:`~pk_notebook.notebook.markdown.render_markdown` and everything else
  through :func:`html.escape`.
- A tool card shows the call's name, its arguments (filling in as they stream),
  then its result or error, cut for display after :data:`OUTPUT_LIMIT`
  characters with the cut stated (the whole output is in ``result.tool_results``),
  a status mark and, live, the duration.

The saved notebook (decision): the final output of a cell must be byte-stable
under the mock provider for nbval, so it keeps every Thinking section collapsed
with its length only, and every tool card collapsed without its duration (both
vary from run to run). A turn with neither reasoning nor tool calls renders
exactly as before this module existed.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..runtime.types import Message, ToolEvent, ToolResult
from .markdown import close_open_fence, render_markdown, safe_markdown

__all__ = [
    "OUTPUT_LIMIT",
    "TOOL_MARKS",
    "TextBlock",
    "ThinkingBlock",
    "ToolCard",
    "TurnParts",
    "group_turns",
    "part_html",
    "part_markdown",
    "part_plain",
    "parts_from_messages",
    "parts_html",
    "split_answer",
    "turn_text",
    "visible",
]

#: a tool's output is cut for display after this many characters (the whole output
#: stays in ``result.tool_results`` and is what the model was sent)
OUTPUT_LIMIT = 2_000
#: the arguments shown in a card's one-line summary are cut after this many characters
SUMMARY_LIMIT = 80

#: state -> (mark, word) of a tool card
TOOL_MARKS: dict[str, tuple[str, str]] = {
    "calling": ("…", "calling"),
    "waiting": ("…", "waiting"),
    "approval": ("?", "waiting for approval"),
    "running": ("▶", "running"),
    "ok": ("✓", ""),
    "error": ("✗", "error"),
    "denied": ("⊘", "denied"),
    "stopped": ("■", "stopped"),
    "abandoned": ("■", "abandoned"),
}
_DONE = frozenset({"ok", "error", "denied", "stopped", "abandoned"})
_EVENT_STATE = {
    "start": "calling",
    "arguments": "calling",
    "call": "waiting",
    "running": "running",
    "result": "ok",
    "error": "error",
    "denied": "denied",
    "stopped": "stopped",
}


# --- the model --------------------------------------------------------------------------


@dataclass(eq=False)
class ThinkingBlock:
    """One stretch of reasoning (between two other parts)."""

    text: str = ""
    started: float = 0.0
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.ended is not None

    def duration(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


@dataclass(eq=False)
class ToolCard:
    """One tool call as shown: filled in by :class:`~pk_notebook.runtime.types.ToolEvent`\\ s."""

    name: str
    call_id: str = ""
    index: int = 0
    round: int = 1
    arguments: str = ""
    state: str = "calling"
    output: str | None = None
    duration: float | None = None
    started: float = 0.0  # when it started running (monotonic), for the live duration

    @property
    def done(self) -> bool:
        return self.state in _DONE

    def elapsed(self, now: float) -> float | None:
        if self.duration is not None:
            return self.duration
        if self.state == "running" and self.started:
            return now - self.started
        return None


@dataclass(eq=False)
class TextBlock:
    """A stretch of answer text: ``text[start:end]`` of the turn's whole text."""

    start: int
    end: int | None = None


Part = ThinkingBlock | ToolCard | TextBlock


@dataclass
class TurnParts:
    """A turn's visible parts in arrival order; feed it the stream's chunks.

    ``clock`` gives the time for durations (``time.monotonic`` by default; tests
    pass their own). Every ``add_*`` returns the part it changed, so a live view
    re-renders just that part.
    """

    blocks: list[Part] = field(default_factory=list)
    clock: Any = time.monotonic
    text_length: int = 0

    @property
    def has_parts(self) -> bool:
        """True if the turn showed anything besides answer text."""
        return any(not isinstance(b, TextBlock) for b in self.blocks)

    @property
    def cards(self) -> list[ToolCard]:
        return [b for b in self.blocks if isinstance(b, ToolCard)]

    @property
    def thinking(self) -> list[ThinkingBlock]:
        return [b for b in self.blocks if isinstance(b, ThinkingBlock)]

    @property
    def last(self) -> Part | None:
        return self.blocks[-1] if self.blocks else None

    def running(self) -> list[ToolCard]:
        return [c for c in self.cards if c.state == "running"]

    def _end_thinking(self) -> ThinkingBlock | None:
        """Close the open thinking stretch, if any (something else follows); return it."""
        last = self.last
        if isinstance(last, ThinkingBlock) and last.ended is None:
            last.ended = self.clock()
            return last
        return None

    def _end_text(self) -> None:
        last = self.last
        if isinstance(last, TextBlock) and last.end is None:
            last.end = self.text_length

    def add_text(self, piece: str) -> tuple[TextBlock, ThinkingBlock | None]:
        """Answer text arrived: the current text block, and a thinking block it closed."""
        closed = None
        last = self.last
        if not isinstance(last, TextBlock):
            closed = self._end_thinking()
            last = TextBlock(self.text_length)
            self.blocks.append(last)
        self.text_length += len(piece)
        return last, closed

    def add_reasoning(self, piece: str) -> ThinkingBlock:
        last = self.last
        if not isinstance(last, ThinkingBlock) or last.ended is not None:
            self._end_text()
            last = ThinkingBlock(started=self.clock())
            self.blocks.append(last)
        last.text += piece
        return last

    def find(self, event: ToolEvent) -> ToolCard | None:
        for card in reversed(self.cards):
            if card.round == event.round and card.index == event.index:
                return card
        return None

    def add_tool_event(self, event: ToolEvent) -> tuple[ToolCard, ThinkingBlock | None]:
        """A tool event: the card it changed (made on first sight), and a thinking block
        it closed."""
        closed = None
        card = self.find(event)
        if card is None:
            closed = self._end_thinking()
            self._end_text()
            card = ToolCard(event.name, event.call_id, event.index, event.round)
            self.blocks.append(card)
        if event.name:
            card.name = event.name
        if event.call_id:
            card.call_id = event.call_id
        if event.arguments:
            card.arguments = event.arguments  # the whole arguments so far
        elif event.kind == "arguments":
            card.arguments += event.delta
        if not card.done:  # a late event never revives a finished card
            card.state = _EVENT_STATE.get(event.kind, card.state)
        if event.kind == "running":
            card.started = self.clock()
        if event.output is not None:
            card.output = event.output
        if event.duration is not None:
            card.duration = event.duration
        return card, closed

    def waiting_for_approval(self, call_id: str, name: str, arguments: str) -> ToolCard | None:
        for card in reversed(self.cards):
            if card.call_id == call_id or (not call_id and card.name == name and not card.done):
                if not card.done:
                    card.state = "approval"
                    if arguments:
                        card.arguments = arguments
                return card
        return None

    def finish(self, tool_results: Sequence[ToolResult] = ()) -> None:
        """The turn ended: close what is open and take each call's final status from
        the result (``abandoned`` is only known there). A card still in progress
        without a result ended with the turn: ``stopped``."""
        self._end_thinking()
        self._end_text()
        by_id = {r.call.id: r for r in tool_results if r.call.id}
        for card in self.cards:
            found = by_id.get(card.call_id)
            if found is not None:
                card.state = found.status
                card.output = found.output
                card.duration = found.duration
                if found.call.arguments:
                    card.arguments = found.call.arguments
            elif not card.done:
                card.state = "stopped"


# --- shared helpers ---------------------------------------------------------------------


def _count(text: str) -> str:
    n = len(text)
    return f"{n:,} character{'s' if n != 1 else ''}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.95 else f"{value:.2f} s"


def one_line(arguments: str, limit: int = SUMMARY_LIMIT) -> str:
    """The arguments on one line for a summary: compact JSON when it parses, cut at ``limit``."""
    text = arguments.strip()
    try:
        text = json.dumps(json.loads(text), ensure_ascii=False, separators=(", ", ": "))
    except ValueError:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_arguments(arguments: str) -> str:
    """The whole arguments for a card's body: indented JSON when it parses."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False, indent=2)
    except ValueError:
        return arguments


def cut(output: str, limit: int = OUTPUT_LIMIT) -> tuple[str, str]:
    """``(shown, note)``: ``output`` cut at ``limit`` characters, and what the cut left out."""
    if len(output) <= limit:
        return output, ""
    return output[:limit], (
        f"cut for display: {limit:,} of {len(output):,} characters shown; "
        "the whole output is in result.tool_results"
    )


def _outcome_label(state: str) -> str:
    return {
        "ok": "Result",
        "error": "Error",
        "denied": "Denied",
        "stopped": "Stopped",
        "abandoned": "Abandoned",
    }.get(state, "Output")


def _summary_words(card: ToolCard, *, live: bool, now: float) -> list[str]:
    word = TOOL_MARKS.get(card.state, ("…", card.state))[1]
    words = [word] if word else []
    if live:
        elapsed = card.elapsed(now)
        if elapsed is not None:
            words.append(_seconds(elapsed))
    return words


# --- Markdown (the cell) ----------------------------------------------------------------


def _html_text(text: str) -> str:
    """Text for a raw-HTML line in Markdown: escaped, and no ``$`` or ``\\`` for math."""
    return html.escape(text).replace("$", "&#36;").replace("\\", "&#92;")


def fenced(text: str, info: str = "") -> str:
    """``text`` as a fenced code block no line of it can close."""
    longest = 0
    run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    return f"{fence}{info}\n{body}{'' if body.endswith(chr(10)) or not body else chr(10)}{fence}"


def thinking_markdown(block: ThinkingBlock, *, live: bool = False, now: float = 0.0) -> str:
    """A ``<details>`` section around the reasoning (safe Markdown inside)."""
    is_open = live and not block.done
    words = ["Thinking…" if is_open else "Thinking", _count(block.text)]
    if live:
        words.append(_seconds(block.duration(now)))
    summary = _html_text(" · ".join(words))
    body = safe_markdown(close_open_fence(block.text.strip("\n")))
    return (
        f'<details class="pk-thinking"{" open" if is_open else ""}>\n'
        f"<summary>{summary}</summary>\n\n{body}\n\n</details>"
    )


def tool_markdown(card: ToolCard, *, live: bool = False, now: float = 0.0) -> str:
    """A ``<details>`` card for one tool call; open while in progress, live."""
    is_open = live and not card.done
    mark = TOOL_MARKS.get(card.state, ("…", ""))[0]
    summary = f"{_html_text(mark)} <strong>{_html_text(card.name or 'tool')}</strong>"
    if card.arguments.strip():
        summary += f" <code>{_html_text(one_line(card.arguments))}</code>"
    words = _summary_words(card, live=live, now=now)
    if words:
        summary += _html_text(" · " + " · ".join(words))
    sections = []
    if card.arguments.strip():
        sections.append("**Arguments**\n\n" + fenced(pretty_arguments(card.arguments), "json"))
    if card.output is not None:
        shown, note = cut(card.output)
        section = f"**{_outcome_label(card.state)}**\n\n" + fenced(shown)
        if note:
            section += f"\n\n*({note})*"
        sections.append(section)
    body = "\n\n".join(sections) or "*(no arguments yet)*"
    return (
        f'<details class="pk-tool pk-tool-{card.state}"{" open" if is_open else ""}>\n'
        f"<summary>{summary}</summary>\n\n{body}\n\n</details>"
    )


def part_markdown(
    part: Part,
    text: str = "",
    *,
    live: bool = False,
    now: float = 0.0,
    render_text: Any = None,
) -> str:
    """One part as Markdown; a :class:`TextBlock` is rendered by ``render_text(slice)``."""
    if isinstance(part, ThinkingBlock):
        return thinking_markdown(part, live=live, now=now)
    if isinstance(part, ToolCard):
        return tool_markdown(part, live=live, now=now)
    piece = text[part.start : part.end]
    if render_text is not None:
        return str(render_text(piece))
    return safe_markdown(close_open_fence(piece))


# --- plain text (text/plain, terminals) -------------------------------------------------


def thinking_plain(block: ThinkingBlock, *, live: bool = False, now: float = 0.0) -> str:
    words = ["Thinking", _count(block.text)]
    if live:
        words.append(_seconds(block.duration(now)))
    return "▸ " + " · ".join(words)


def tool_plain(card: ToolCard, *, live: bool = False, now: float = 0.0) -> str:
    mark = TOOL_MARKS.get(card.state, ("…", ""))[0]
    line = f"{mark} {card.name or 'tool'}"
    if card.arguments.strip():
        line += f" {one_line(card.arguments)}"
    words = _summary_words(card, live=live, now=now)
    if words:
        line += " · " + " · ".join(words)
    if card.output is not None:
        first = one_line(card.output.strip().split("\n", 1)[0] if card.output.strip() else "")
        if first:
            line += f"\n  → {first}"
    return line


def part_plain(part: Part, text: str = "", *, live: bool = False, now: float = 0.0) -> str:
    if isinstance(part, ThinkingBlock):
        return thinking_plain(part, live=live, now=now)
    if isinstance(part, ToolCard):
        return tool_plain(part, live=live, now=now)
    return text[part.start : part.end]


# --- HTML (the chat) --------------------------------------------------------------------


def thinking_html(block: ThinkingBlock, *, live: bool = False, now: float = 0.0) -> str:
    is_open = live and not block.done
    words = ["Thinking…" if is_open else "Thinking", _count(block.text)]
    if live:
        words.append(_seconds(block.duration(now)))
    return (
        f'<details class="pk-thinking"{" open" if is_open else ""}>'
        f"<summary>{html.escape(' · '.join(words))}</summary>"
        f'<div class="pk-thinking-body">{render_markdown(block.text)}</div></details>'
    )


def tool_html(card: ToolCard, *, live: bool = False, now: float = 0.0) -> str:
    is_open = live and not card.done
    mark = TOOL_MARKS.get(card.state, ("…", ""))[0]
    summary = (
        f'<span class="pk-tool-mark">{html.escape(mark)}</span> '
        f"<strong>{html.escape(card.name or 'tool')}</strong>"
    )
    if card.arguments.strip():
        summary += f" <code>{html.escape(one_line(card.arguments))}</code>"
    words = _summary_words(card, live=live, now=now)
    if words:
        summary += html.escape(" · " + " · ".join(words))
    body = ""
    if card.arguments.strip():
        body += (
            '<div class="pk-tool-label">Arguments</div>'
            f"<pre>{html.escape(pretty_arguments(card.arguments))}</pre>"
        )
    if card.output is not None:
        shown, note = cut(card.output)
        body += (
            f'<div class="pk-tool-label">{_outcome_label(card.state)}</div>'
            f"<pre>{html.escape(shown)}</pre>"
        )
        if note:
            body += f'<div class="pk-tool-note">({html.escape(note)})</div>'
    return (
        f'<details class="pk-tool pk-tool-{card.state}"{" open" if is_open else ""}>'
        f"<summary>{summary}</summary>{body}</details>"
    )


def parts_html(parts: TurnParts, *, live: bool = False, now: float | None = None) -> str:
    """The thinking sections and tool cards of a turn, in order, as HTML (no answer text)."""
    when = parts.clock() if now is None else now
    out = []
    for part in parts.blocks:
        if isinstance(part, ThinkingBlock) and part.text.strip():
            out.append(thinking_html(part, live=live, now=when))
        elif isinstance(part, ToolCard):
            out.append(tool_html(part, live=live, now=when))
    return "".join(out)


def part_html(part: Part, *, live: bool = False, now: float = 0.0) -> str:
    if isinstance(part, ThinkingBlock):
        return thinking_html(part, live=live, now=now)
    if isinstance(part, ToolCard):
        return tool_html(part, live=live, now=now)
    return ""


# --- the whole turn ---------------------------------------------------------------------


def visible(parts: TurnParts, text: str) -> list[Part]:
    """The parts worth showing: no empty thinking, no whitespace-only text between parts."""
    out: list[Part] = []
    for part in parts.blocks:
        if isinstance(part, ThinkingBlock) and not part.text.strip():
            continue
        if isinstance(part, TextBlock) and not text[part.start : part.end].strip():
            continue
        out.append(part)
    return out


def turn_bundle(
    parts: TurnParts,
    text: str,
    *,
    render_text: Any,
    notes_markdown: str = "",
    notes_plain: str = "",
    markdown: bool = True,
    live: bool = False,
) -> dict[str, str]:
    """The MIME bundle of a turn with parts: each part, in order, then the notes.

    ``render_text(slice)`` renders a stretch of answer text as Markdown (the cell's
    own rules for its ``--format``). Deterministic when ``live`` is False.
    """
    now = parts.clock()
    shown = visible(parts, text)
    plain = "\n\n".join(part_plain(p, text, live=live, now=now).strip("\n") for p in shown)
    if notes_plain:
        plain = (plain + "\n\n" if plain else "") + notes_plain
    if not markdown:
        return {"text/plain": plain}
    body = "\n\n".join(
        part_markdown(p, text, live=live, now=now, render_text=render_text).strip("\n")
        for p in shown
    )
    if notes_markdown:
        body = (body + "\n\n" if body.strip() else "") + notes_markdown
    return {"text/markdown": body, "text/plain": plain}


# --- from stored messages (the chat's transcript, a reloaded session) ----------------------


def split_answer(parts: TurnParts | None, text: str) -> tuple[TurnParts | None, str]:
    """``(head, answer)``: a turn's parts up to its last thinking section or tool card,
    with the text said before and between them (``text[block.start:block.end]``), and
    its answer: the text after them. ``head`` is None when the turn is only an answer.

    The answer is what a view renders as the reply (Markdown, or with a schema the
    object it validates to); text said before a tool call stays text, in its place.
    """
    blocks = parts.blocks if parts is not None else []
    last = max((i for i, b in enumerate(blocks) if not isinstance(b, TextBlock)), default=-1)
    if parts is None or last < 0:
        return None, text
    after = blocks[last + 1 :]
    answer = text[after[0].start :] if after and isinstance(after[0], TextBlock) else ""
    return TurnParts(blocks[: last + 1], clock=parts.clock), answer


def turn_text(messages: Sequence[Message]) -> str:
    """A stored turn's text, as it streamed: its assistant messages' text, in order (the
    text :func:`parts_from_messages`' blocks index)."""
    return "".join(m.content for m in messages if m.role == "assistant")


def parts_from_messages(messages: Sequence[Message]) -> TurnParts:
    """The parts of a stored turn: its assistant messages' reasoning, text and tool calls,
    in that order, and the tool messages' results (``messages`` are one turn's, after the
    user's message). Its text blocks index :func:`turn_text`."""
    parts = TurnParts(clock=lambda: 0.0)
    results = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
    for message in messages:
        if message.role != "assistant":
            continue
        if message.reasoning:
            parts.add_reasoning(message.reasoning)
            parts._end_thinking()
        if message.content:
            parts.add_text(message.content)  # said before its calls, if it made any
        if message.tool_calls:
            parts._end_text()
        for index, call in enumerate(message.tool_calls):
            card = ToolCard(call.name, call.id, index, arguments=call.arguments, state="stopped")
            answer = results.get(call.id)
            if answer is not None:
                card.output = answer.content
                # Stored: ok, an error (also a denied call), or stopped (or abandoned).
                card.state = "error" if answer.is_error else "ok"
                if answer.status in ("stopped", "abandoned", "denied"):
                    card.state = answer.status
            parts.blocks.append(card)
    return parts


def group_turns(messages: Sequence[Message]) -> list[tuple[Message, TurnParts | None, str]]:
    """The messages a transcript shows, each with the parts of its turn and its text.

    An assistant message that carried tool calls (with or without text said before
    them), and the tool messages answering them, are not shown on their own: their
    reasoning, text and calls become the parts of the turn's last assistant message
    (the answer, or the last call of a turn that ended inside its tool calls), as the
    turn was shown live. ``text`` is the turn's whole text (:func:`turn_text`), which
    the parts' text blocks index; for a message without parts (None) it is its content.
    Split it with :func:`split_answer` into what was said before and the answer.
    """
    shown: list[tuple[Message, TurnParts | None, str]] = []
    pending: list[Message] = []

    def add_turn(turn: list[Message]) -> None:
        assistant = [m for m in turn if m.role == "assistant"]
        if not assistant:
            return
        parts = parts_from_messages(turn)
        if parts.has_parts:
            shown.append((assistant[-1], parts, turn_text(turn)))
        else:
            shown.append((assistant[-1], None, assistant[-1].content))

    for message in messages:
        if message.role == "user":
            add_turn(pending)  # a turn that ended inside its tool calls (stopped)
            pending = []
            shown.append((message, None, message.content))
        elif message.role == "tool":
            pending.append(message)
        elif message.role == "assistant":
            pending.append(message)
            if not message.tool_calls:
                add_turn(pending)
                pending = []
    add_turn(pending)
    return shown
