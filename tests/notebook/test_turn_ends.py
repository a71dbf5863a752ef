"""A provider piece that is not text ends the turn cleanly in the cell and in the chat.

The answer shows what arrived, the error is typed (a ``ProtocolError``, never a
bare ``TypeError``), the session lock is free for the next turn, and the
pipeline shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pk_notebook import Chat, Delta, Finish, Pipeline, ProtocolError, Request, StreamStatus


class BrokenProvider:
    """Sends some text, then a number where text belongs (a broken compatible server)."""

    name = "broken"
    model = "broken-1"

    async def stream(self, request: Request) -> AsyncIterator[Delta | Finish]:
        yield Delta(text="Hello ")
        yield Delta(text=42)  # type: ignore[arg-type]
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


def test_the_cell_shows_a_typed_error_and_frees_the_session(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = Pipeline(BrokenProvider())
    ip.user_ns["broken"] = pipe
    for _ in range(2):  # the second turn would wait on a lock the first never released
        assert ip.run_cell("%%stream --pipeline broken -s s1 -o answer\nhi").success
        answer = ip.user_ns["answer"]
        assert answer.status is StreamStatus.FAILED
        assert isinstance(answer.error, ProtocolError)
        assert answer.text == "Hello "
    out = capsys.readouterr().out
    assert "Failed:" in out and "ProtocolError" not in out.split("Failed:")[0]
    assert "TypeError" not in out
    assert pipe.active_streams == 0
    pipe.sync.shutdown()


async def test_the_chat_shows_the_error_and_takes_the_next_message() -> None:
    pipe = Pipeline(BrokenProvider())
    chat = Chat(pipe, session_id="c1")
    for _ in range(2):
        result = await asyncio.wait_for(chat.send("hi"), 5)
        assert result.status is StreamStatus.FAILED
        assert isinstance(result.error, ProtocolError)
        assert result.text == "Hello "
    assert not chat.streaming
    assert pipe.active_streams == 0
    await asyncio.wait_for(pipe.shutdown(), 5)
    chat.close()
