"""Long Markdown answers and a provider that streams them at a set pace.

Shared by ``benchmarks/live.py`` and the live view's kernel tests (which import
it inside the kernel). No ``main()``: ``python -m benchmarks`` skips it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from pk_notebook.runtime.types import Delta, Finish, Request, Usage

_WORDS = (
    "stream model answer token latency cell kernel notebook render update block table "
    "fence paragraph list value cost session provider chunk buffer display output "
    "browser thread frame budget measure figure result string python async event"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    if rng.random() < 0.2:
        words[rng.randrange(len(words))] = f"**{rng.choice(_WORDS)}**"
    if rng.random() < 0.15:
        words[rng.randrange(len(words))] = f"`{rng.choice(_WORDS)}()`"
    if rng.random() < 0.1:
        words[rng.randrange(len(words))] = f"$x_{rng.randint(1, 9)} + y$"
    return " ".join(words).capitalize() + "."


def long_answer(size: int, seed: int = 17) -> str:
    """A realistic Markdown answer of about ``size`` characters (deterministic).

    Headings, paragraphs, bullet lists, fenced code, tables and a little inline
    math, in the proportions of a long technical answer.
    """
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    section = 0
    while total < size:
        kind = rng.random()
        if kind < 0.08:
            section += 1
            block = f"## Part {section}: {rng.choice(_WORDS)} and {rng.choice(_WORDS)}"
        elif kind < 0.55:
            block = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        elif kind < 0.72:
            block = "\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(3, 7)))
        elif kind < 0.88:
            lines = [
                f"    {rng.choice(_WORDS)}_{i} = {rng.choice(_WORDS)}({i}, {rng.randint(0, 99)})"
                for i in range(rng.randint(5, 25))
            ]
            block = "```python\ndef example():\n" + "\n".join(lines) + "\n    return None\n```"
        else:
            rows = [
                f"| {rng.choice(_WORDS)} | {rng.randint(1, 999)} | {rng.choice(_WORDS)} |"
                for _ in range(rng.randint(3, 10))
            ]
            block = "| name | value | note |\n|---|---:|---|\n" + "\n".join(rows)
        parts.append(block)
        total += len(block) + 2
    return "\n\n".join(parts)[:size].rstrip() + "\n"


class PacedProvider:
    """Streams ``text`` in ``chunk`` characters at ``rate`` characters a second.

    A real model sends a token at a time; sending bigger pieces on a timer is
    how a benchmark reaches megabyte answers in seconds without measuring the
    event loop's sleep granularity instead of the live view.
    """

    name = "paced"

    def __init__(
        self,
        text: str,
        *,
        rate: float = 200_000,
        chunk: int = 400,
        model: str = "paced-1",
        fail_after: int | None = None,
    ) -> None:
        self.text = text
        self.rate = rate
        self.chunk = chunk
        self.model = model
        self.fail_after = fail_after  # characters sent before a failure (None: never)
        self.outcome = ""

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        self.outcome = "streaming"
        try:
            while sent < len(self.text):
                if self.fail_after is not None and sent >= self.fail_after:
                    from pk_notebook.runtime.errors import ServerError

                    self.outcome = "error"
                    raise ServerError("paced: the model failed mid-answer", provider=self.name)
                piece = self.text[sent : sent + self.chunk]
                sent += len(piece)
                due = start + sent / self.rate
                wait = due - loop.time()
                await asyncio.sleep(max(0.0, wait))
                yield Delta(piece)
            self.outcome = "finished"
            yield Finish(
                reason="stop",
                usage=Usage(input_tokens=10, output_tokens=len(self.text) // 4),
                model=request.config.model or self.model,
            )
        finally:
            if self.outcome == "streaming":
                self.outcome = "closed"

    async def aclose(self) -> None:
        return None


class StepProvider:
    """Sends ``steps`` one by one: ``(text, seconds to wait after it)``; then finishes.

    For looking at a half-written answer: a step with a long wait holds the
    stream mid-answer (mid code fence, mid table) until Stop.
    """

    name = "steps"

    def __init__(self, steps: list[tuple[str, float]], model: str = "steps-1") -> None:
        self.steps = steps
        self.model = model

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        for text, wait in self.steps:
            yield Delta(text)
            if wait:
                await asyncio.sleep(wait)
        yield Finish(reason="stop", model=self.model)

    async def aclose(self) -> None:
        return None
