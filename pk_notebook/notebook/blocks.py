"""Incremental Markdown for the live view: finished blocks once, only the tail again.

The live view of a ``%%stream`` cell used to re-send and re-render the whole
answer on every update: O(n) per update, O(n^2) per answer. Here the answer is
cut, as it arrives, into *finished* pieces (sent and rendered once, never
touched again) and an unfinished *tail* (the only thing re-sent on the next
update). :class:`BlockSplitter` finds the cuts incrementally: it scans each new
line once, keeping a little state (inside a code fence? after a blank line? a
table's header?), so the work per update is proportional to what arrived, never
to the answer's length.

Where a cut is safe (the text before it renders the same alone as in the whole):

- before a line that starts at column 0 after a blank line (a new block: a blank
  line ends paragraphs, tables and HTML blocks; what is indented after it may
  still belong to a list item, so no cut there);
- after a closing code fence, before a code fence that opens at column 0, and
  before and after an ATX heading (``# ...``) at column 0.

A tail that grows past ``limit`` characters without such a cut (a long code
block, a long table, a paragraph of many lines) is cut at its last complete
line anyway, so no update re-sends more than about ``limit`` characters: an
open code fence is closed for the finished piece and reopened (same info
string) in the tail; a table's header and delimiter rows are repeated in the
tail. Only the live view looks different there (a code block in two boxes);
the final output is the whole answer, rendered once, as always.

The tail itself is rendered so that half-written Markdown does not jump
(:meth:`BlockSplitter.tail_markdown`): an open code fence is closed for
rendering (it shows as code, not as paragraphs), a table row still being
written is held back until its line is complete (and a header row until its
delimiter row has arrived), and an opening math delimiter (``$``, ``$$``,
``\\(``, ``\\[``, ``\\begin{...}``) with no closing one yet is escaped, so
math is typeset only once it is complete. Unclosed emphasis or links can only
change the tail, never what is already shown.
"""

from __future__ import annotations

import bisect
import re

from .markdown import close_open_fence, safe_markdown
from .texmath import _TOKENS, _masked, find_math

__all__ = ["BlockSplitter", "escape_open_math", "piece_markdown"]

#: about how many characters one update re-sends at most (the tail's size)
TAIL_LIMIT = 1500

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
_HEADING = re.compile(r"^#{1,6}(?:[ \t]|$)")


def piece_markdown(text: str) -> str:
    """A finished piece as safe Markdown (the same rules as the final output)."""
    return safe_markdown(close_open_fence(text))


def escape_open_math(text: str) -> str:
    """``text`` with every math opener that has no closing delimiter made literal.

    Jupyter would typeset ``$x + y`` only once its ``$`` closes, but the Markdown
    parser mangles what follows an unclosed ``$`` (``_`` becomes emphasis), and a
    later ``$`` far away could pair with it. The opener's ``$`` or ``\\`` becomes
    an entity: shown as written, seen by no math scanner. Code is left alone.
    """
    if not any(c in text for c in "$\\"):
        return text
    spans = find_math(text, latex=True)
    starts = [s.start for s in spans]
    edits: dict[int, str] = {}
    for token in _TOKENS.finditer(_masked(text, True)):
        block = token.group(0)
        opener = block in ("$", "$$", "\\\\(", "\\\\[", "\\(", "\\[") or block[1:6] == "begin"
        if not opener:
            continue
        at = token.start()
        k = bisect.bisect_right(starts, at) - 1
        if k >= 0 and at < spans[k].end:
            continue  # part of a complete formula
        for i in range(at, token.end()):
            if text[i] == "$":
                edits[i] = "&#36;"
            elif text[i] == "\\" and i == at:
                edits[i] = "&#92;"
    if not edits:
        return text
    out, last = [], 0
    for at in sorted(edits):
        out += [text[last:at], edits[at]]
        last = at + 1
    out.append(text[last:])
    return "".join(out)


class BlockSplitter:
    """Cut a growing Markdown text into finished pieces and an unfinished tail.

    ``feed(text)`` as text arrives; ``take()`` returns the pieces finished since
    the last call (raw Markdown, each ending with a newline; concatenated they
    are the text so far, except for the fences and table headers added where a
    long block was cut) and leaves the rest as :attr:`tail`. Each character is
    scanned once; the tail stays about ``limit`` characters or less.
    """

    def __init__(self, limit: int = TAIL_LIMIT) -> None:
        self.limit = limit
        self.tail = ""
        self.fed = 0  # characters fed in all
        self._pending: list[str] = []
        self._pos = 0  # where the first line not scanned yet starts in the tail
        self._fence: str | None = None  # the open fence's marker (``` or ~~~...)
        self._fence_line = ""  # and its opening line, to reopen it after a cut
        self._blank = False  # the last line scanned was blank (outside code)
        self._table_head = ""  # the tail is a table: its header and delimiter rows
        self._first_line_end = -1  # end of the tail's first line (table detection)

    @property
    def in_fence(self) -> bool:
        return self._fence is not None

    def feed(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self.fed += len(text)

    def take(self) -> list[str]:
        """The pieces finished since the last call; :attr:`tail` is what is left."""
        if self._pending:
            new = "".join(self._pending)
            self._pending.clear()
            if "\r" in new:
                if new.endswith("\r"):  # its "\n" may come in the next piece
                    new, self._pending = new[:-1], ["\r"]
                new = new.replace("\r\n", "\n").replace("\r", "\n")
            self.tail += new
        done: list[str] = []
        tail = self.tail
        pos = self._pos
        while True:
            end = tail.find("\n", pos)
            if end < 0:
                break
            line = tail[pos:end]
            after = end + 1
            cut_before = cut_after = False
            if self._fence is not None:
                match = _FENCE.match(line)
                if (
                    match
                    and match.group(2)[0] == self._fence[0]
                    and len(match.group(2)) >= len(self._fence)
                    and not match.group(3).strip()
                ):
                    self._fence = None
                    cut_after = True
            elif not line.strip():
                self._blank = True
                self._table_head = ""  # a blank line ends a table
            else:
                column0 = line[0] not in " \t"
                cut_before = self._blank and column0
                self._blank = False
                match = _FENCE.match(line)
                if match and not (match.group(2)[0] == "`" and "`" in match.group(3)):
                    self._fence = match.group(2)
                    self._fence_line = line
                    cut_before = cut_before or not match.group(1)
                elif column0 and _HEADING.match(line):
                    cut_before = cut_after = True
                elif (
                    pos == self._first_line_end + 1
                    and self._first_line_end >= 0
                    and not self._table_head
                    and "|" in tail[: self._first_line_end]
                    and _TABLE_DELIMITER.match(line)
                ):
                    self._table_head = tail[:after]
            if cut_before and pos > 0:
                done.append(tail[:pos])
                tail, end, after = tail[pos:], end - pos, after - pos
                pos = 0
                self._table_head = ""
            if pos == 0:
                self._first_line_end = end
            if cut_after:
                done.append(tail[:after])
                tail, after = tail[after:], 0
                self._table_head = ""
                self._first_line_end = -1
                self._blank = False
            pos = after
            if pos > self.limit:
                tail, pos = self._cut_long(tail, pos, done)
        if len(tail) > 2 * self.limit:  # one long line with no newline yet
            tail, pos = self._cut_line(tail, pos, done)
        self.tail, self._pos = tail, pos
        return done

    def _cut_long(self, tail: str, pos: int, done: list[str]) -> tuple[str, int]:
        """Cut a long block at ``pos`` (a line start): fences and tables carry on below."""
        head = ""
        piece = tail[:pos]
        if self._fence is not None:
            if pos <= len(self._fence_line) + 1:
                return tail, pos
            head = self._fence_line + "\n"
            piece += self._fence + "\n"
        elif self._table_head:
            if pos <= len(self._table_head):
                return tail, pos
            head = self._table_head
        done.append(piece)
        tail = head + tail[pos:]
        self._first_line_end = len(head) - 1 if head else -1
        return tail, len(head)

    def _cut_line(self, tail: str, pos: int, done: list[str]) -> tuple[str, int]:
        """A line longer than twice the limit: cut it (at a space outside code)."""
        line_start = pos
        if self._fence is not None:
            at = len(tail) - self.limit
        else:
            at = tail.rfind(" ", line_start + 1, len(tail) - self.limit // 2) + 1
        if at <= line_start:
            return tail, pos
        head = ""
        piece = tail[:at]
        if self._fence is not None:
            piece += "\n" + self._fence + "\n"
            head = self._fence_line + "\n"
        else:
            piece += "\n"
        done.append(piece)
        self._table_head = ""
        self._first_line_end = len(head) - 1 if head else -1
        return head + tail[at:], len(head)

    def tail_markdown(self) -> str:
        """The tail as safe Markdown that does not jump while it is written (see above)."""
        return safe_markdown(self.tail_text())

    def tail_text(self) -> str:
        """The tail as Markdown to render (not sanitised): see the module docstring."""
        text = self.tail
        if self._fence is None:
            cut = text.rfind("\n") + 1
            if text[cut:].lstrip(" ").startswith("|"):
                text = text[:cut]  # a table row being written: shown once complete
            if not self._table_head:
                body = text.rstrip("\n")
                start = body.rfind("\n") + 1
                if body[start:].lstrip(" ").startswith("|") and start == 0:
                    text = text[:start]  # a header row whose delimiter row has not arrived
        return escape_open_math(close_open_fence(text))
