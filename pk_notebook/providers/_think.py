"""``<think>...</think>`` in the answer text: local reasoning models on OpenAI-compatible servers.

Ollama, vLLM (without a reasoning parser), LM Studio and llama.cpp serve models
such as DeepSeek-R1 and its distills, QwQ or Qwen3 whose thinking is part of the
answer text, between ``<think>`` and ``</think>``. :class:`ThinkSplitter` turns
that text into reasoning, incrementally, as the pieces arrive.

The decision (the ``think_tags`` option of
:class:`~pk_notebook.providers.openai.OpenAIProvider`):

``"auto"`` (the default)
    A ``<think>`` at the start of the answer (after whitespace) opens the
    reasoning. Some chat templates write the opening tag themselves, so the model
    starts *inside* the reasoning and only ``</think>`` ever appears: models
    whose name matches :data:`OPENED_MODELS` (``deepseek-r1``, ``r1-distill``,
    ``qwq``, any case) start as reasoning until ``</think>`` (a ``<think>`` they do
    send is consumed too).
``"open"``
    Every model starts inside the reasoning, as those models do (for a model
    served under a name the pattern does not know).
``"off"``
    The text is left alone.

Only one thinking section is recognised, at the start of the answer: a
``<think>`` later in an answer is text (a model explaining the tags, an HTML
answer). Whitespace around the tags is template formatting: whitespace before
``<think>`` and between ``</think>`` and the answer is dropped. A server that
sends the reasoning in a field of its own (``reasoning_content``, ``reasoning``:
vLLM with a reasoning parser, recent Ollama) has split it already: a reasoning
field arriving before any text turns the splitter off, whatever the option.

The cost: a tag may be cut anywhere between two pieces, so while a tag may
still come, a piece ending in a possible beginning of one (``"<"``, ``"</thi"``)
is held back, never more than ``len("</think>") - 1`` characters (plus the
whitespace at the very start), and sent with the next piece. Once the decision
is made (the first text is not ``<think>``, or ``</think>`` has passed and the
answer began), :attr:`ThinkSplitter.off` is true and the parser bypasses the
splitter entirely: the plain-text path costs nothing more. At the end of the
answer :meth:`ThinkSplitter.flush` returns what is held back (as reasoning if the
tag was never closed). On a connection that breaks mid-answer the held-back
characters (at most 7) are lost with it.
"""

from __future__ import annotations

import re
from typing import Literal

ThinkTags = Literal["auto", "open", "off"]
THINK_TAGS: tuple[str, ...] = ("auto", "open", "off")

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

#: model names whose chat template opens ``<think>`` before the model writes a word
OPENED_MODELS = re.compile(r"deepseek-r1|r1-distill|qwq", re.IGNORECASE)

# states
_START = 0  # nothing but whitespace yet: is the first thing a <think>?
_INSIDE = 1  # in the reasoning, until </think>
_AFTER = 2  # </think> passed: dropping the whitespace before the answer
_OFF = 3  # decided: the rest is plain text


class ThinkSplitter:
    """Splits answer text into ``(text, reasoning)`` around one leading think section.

    ``opened`` says the chat template already opened the tag (the model starts
    inside the reasoning). Feed each piece of text to :meth:`feed`; call
    :meth:`flush` at the end of the answer.
    """

    __slots__ = ("_held", "_opened", "_state", "seen_text")

    def __init__(self, opened: bool = False) -> None:
        self._opened = opened
        self._state = _START
        self._held = ""
        #: some text arrived (so a reasoning field can no longer mean "already split")
        self.seen_text = False

    @classmethod
    def for_model(cls, mode: str, model: str | None) -> ThinkSplitter | None:
        """The splitter the ``think_tags`` option asks for, or ``None`` for ``"off"``."""
        if mode == "off":
            return None
        if mode == "open":
            return cls(opened=True)
        return cls(opened=bool(model) and OPENED_MODELS.search(model or "") is not None)

    @property
    def off(self) -> bool:
        """No tag can come any more: the text passes unchanged (and nothing is held)."""
        return self._state == _OFF

    @property
    def inside(self) -> bool:
        """The text now arriving is reasoning."""
        return self._state == _INSIDE or (self._state == _START and self._opened)

    def feed(self, piece: str) -> tuple[str, str]:
        """``(text, reasoning)`` that ``piece`` completes (either may be empty)."""
        if not piece:
            return "", ""
        self.seen_text = True
        state = self._state
        if state == _OFF:
            return piece, ""
        if state == _START:
            return self._start(piece)
        if state == _INSIDE:
            return self._inside(piece)
        return self._after(piece)

    def flush(self) -> tuple[str, str]:
        """What is held back, at the end of the answer: ``(text, reasoning)``."""
        held, self._held = self._held, ""
        state = self._state
        self._state = _OFF
        if not held:
            return "", ""
        if state == _INSIDE or (state == _START and self._opened):
            return "", held
        return held, ""

    # --- the states ------------------------------------------------------------------

    def _start(self, piece: str) -> tuple[str, str]:
        text = self._held + piece
        rest = text.lstrip()
        if not rest:  # only whitespace so far
            self._held = text
            return "", ""
        if rest.startswith(OPEN_TAG):
            self._held = ""
            self._state = _INSIDE
            return self._inside(rest[len(OPEN_TAG) :])
        if OPEN_TAG.startswith(rest):  # "<", "<thi": may still become the tag
            self._held = text
            return "", ""
        self._held = ""
        if self._opened:  # no opening tag: the template wrote it, this is reasoning
            self._state = _INSIDE
            return self._inside(rest)
        self._state = _OFF
        return text, ""

    def _inside(self, piece: str) -> tuple[str, str]:
        text = self._held + piece if self._held else piece
        end = text.find(CLOSE_TAG)
        if end >= 0:
            self._held = ""
            self._state = _AFTER
            answer, _ = self._after(text[end + len(CLOSE_TAG) :])
            return answer, text[:end]
        # Hold back the longest end of the text that could begin the closing tag.
        cut = text.rfind("<", -(len(CLOSE_TAG) - 1))
        if cut >= 0 and CLOSE_TAG.startswith(text[cut:]):
            self._held = text[cut:]
            return "", text[:cut]
        self._held = ""
        return "", text

    def _after(self, piece: str) -> tuple[str, str]:
        answer = piece.lstrip()
        if answer:
            self._state = _OFF
        return answer, ""
