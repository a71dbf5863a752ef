"""The chat widget's model, driven in-process: ipywidgets run on comm's DummyComm
without a front end, and the mock provider scripts the answers.

What only a browser shows (Enter vs Shift+Enter, scrolling, the look) is in
tests/browser/test_chat_widget.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pytest

from pk_notebook import Chat, Message, Pipeline, ProviderMiddleware, StreamStatus, UsageMiddleware
from pk_notebook.notebook.defaults import default_pipeline, defaults, reset_defaults
from pk_notebook.notebook.markdown import render_markdown
from pk_notebook.providers.mock import Fault, MockProvider, Scenario

ANSWER = "Hello **there**.\n\n```python\nprint('hi')\n```\n\nThat is all."
LONG = " ".join(f"word{i % 97}" for i in range(400))


def make_pipe(*scenarios: Scenario, **options: Any) -> tuple[Pipeline, MockProvider]:
    provider = MockProvider(list(scenarios) or [Scenario(ANSWER)], model="mock-chat", **options)
    return Pipeline(UsageMiddleware(), ProviderMiddleware(provider)), provider


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time (the chat hung?)")
        await asyncio.sleep(0.005)


def transcript(chat: Chat) -> list[str]:
    """The HTML of every transcript entry, in order (notices as their text)."""
    out = []
    for child in chat._messages.children:
        if isinstance(child, widgets.HBox):
            out.append("NOTICE " + child.children[0].value)
        else:
            out.append(child.value)
    return out


async def send_watching(chat: Chat, text: str) -> tuple[Any, list[str]]:
    """Send ``text``; the result, and the reply's HTML every few milliseconds while it
    streams (the live bubble as a user sees it grow)."""
    seen: list[str] = []
    task = asyncio.ensure_future(chat.send(text))
    while not task.done():
        if len(transcript(chat)) == 2:
            seen.append(transcript(chat)[1])
        await asyncio.sleep(0.003)
    return task.result(), seen


#: where the saved copy's messages begin (after its stylesheet)
SAVED = 'class="pk-chat-messages pk-chat-saved-messages"'


async def check_every_view(chat: Chat, check: Callable[[str], None], **options: Any) -> None:
    """``check(reply_html)`` holds for a chat's one finished reply live, in the saved copy
    of the transcript and in a chat (made with ``options``) reopened on the session, and
    its saved copy; the chats are closed."""
    again = Chat(chat.pipeline, session_id=chat.session_id, **options)
    await again.refresh()
    for shown in (chat, again):
        assert roles(shown) == ["user", "assistant"], "tool messages live inside the reply"
        check(transcript(shown)[1])
        saved = shown._saved_bundle()["text/html"]
        check(saved[saved.index(SAVED) :])
        shown.close()


def roles(chat: Chat) -> list[str]:
    found = []
    for html in transcript(chat):
        if "pk-msg-user" in html:
            found.append("user")
        elif "pk-msg-assistant" in html:
            found.append("assistant")
        elif html.startswith("NOTICE"):
            found.append("notice")
    return found


def reply_waiter(chat: Chat) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    chat.on_reply(queue.put_nowait)
    return queue


async def test_send_streams_the_reply_renders_markdown_and_saves_the_turn() -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="support-demo", title="Ask the docs")
    result = await chat.send("Hi there")

    assert result.status is StreamStatus.FINISHED
    assert result.text == ANSWER
    assert chat.history == [Message("user", "Hi there"), Message("assistant", ANSWER)]
    assert await pipe.state_store.load("support-demo") == chat.history
    html = transcript(chat)
    assert roles(chat) == ["user", "assistant"]
    assert "Hi there" in html[0]
    assert "<strong>there</strong>" in html[1] and "<pre><code" in html[1]
    assert "pk-marker" not in html[1]
    # Controls: Stop only while streaming.
    assert chat._stop_button.disabled and not chat._send_button.disabled and not chat.streaming
    footer = chat._footer.value
    assert "mock-chat" in footer and "2 messages" in footer and "tokens" in footer
    assert "finished" in footer
    assert repr(chat) == (
        "<Chat 'Ask the docs' session='support-demo' messages=2 streaming=False model='mock-chat'>"
    )


async def test_user_text_is_escaped_and_answers_cannot_inject_html() -> None:
    pipe, _ = make_pipe(Scenario("<img src=x onerror=alert(1)> [x](javascript:alert(1))"))
    chat = Chat(pipe, session_id="xss")
    await chat.send("<script>alert(1)</script>\nsecond line")
    user, answer = transcript(chat)
    assert "<script>" not in user and "&lt;script&gt;" in user and "\nsecond line" in user
    assert "<img" not in answer and "&lt;img" in answer
    assert "href" not in answer  # the javascript: link stays text


async def test_stop_mid_stream_closes_the_provider_and_keeps_the_partial_reply() -> None:
    pipe, provider = make_pipe(Scenario(LONG), chunk_delay=0.01)
    chat = Chat(pipe, session_id="stop-me")
    task = asyncio.create_task(chat.send("Tell me everything"))
    await wait_for(lambda: chat.active_stream is not None and len(chat.active_stream.text) > 20)
    assert chat.streaming
    assert not chat._stop_button.disabled and chat._send_button.disabled

    # The click may arrive on another thread (ipykernel subshells).
    await asyncio.to_thread(chat._stop_button.click)
    result = await asyncio.wait_for(task, 5)

    assert result.status is StreamStatus.STOPPED
    assert 20 < len(result.text) < len(LONG)
    assert provider.calls[-1].outcome == "closed" and provider.active == 0
    stored = await pipe.state_store.load("stop-me")
    assert stored[-1] == Message("assistant", result.text, status="stopped")
    answer_html = transcript(chat)[-1]
    assert "pk-marker-stopped" in answer_html
    assert render_markdown(result.text) in answer_html  # the partial text, whole
    assert chat._stop_button.disabled and not chat.streaming
    assert "stopped" in chat._footer.value


async def test_stop_before_the_first_chunk_cancels_the_turn() -> None:
    pipe, provider = make_pipe(first_chunk_delay=30)
    chat = Chat(pipe, session_id="early")
    task = asyncio.create_task(chat.send("Hello?"))
    await wait_for(lambda: chat.streaming and provider.active == 1)
    chat.stop()
    result = await asyncio.wait_for(task, 5)
    assert result.status is StreamStatus.STOPPED and result.text == ""
    assert provider.active == 0
    assert "pk-marker-stopped" in transcript(chat)[-1]
    # Nothing to keep: the store holds no half turn, and the chat works on.
    assert await pipe.state_store.load("early") == []
    provider.first_chunk_delay = 0
    assert (await chat.send("Again")).status is StreamStatus.FINISHED


async def test_cancelling_the_awaiting_code_stops_the_reply() -> None:
    pipe, provider = make_pipe(Scenario(LONG), chunk_delay=0.01)
    chat = Chat(pipe, session_id="interrupt")
    task = asyncio.create_task(chat.send("Go"))
    await wait_for(lambda: chat.active_stream is not None and len(chat.active_stream.text) > 10)
    task.cancel()  # what Kernel > Interrupt does to `await chat.send(...)`
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: not chat.streaming)
    assert provider.active == 0
    assert chat.results[-1].status is StreamStatus.STOPPED


async def test_an_error_shows_inline_keeps_the_partial_text_and_retry_recovers() -> None:
    pipe, _ = make_pipe(
        Scenario(ANSWER, turn=1, fault=Fault(kind="error", after=3)), Scenario(ANSWER)
    )
    chat = Chat(pipe, session_id="faulty")
    replies = reply_waiter(chat)
    failed = await chat.send("Explain")
    assert failed.status is StreamStatus.FAILED
    assert failed.text and len(failed.text) < len(ANSWER)
    assert await replies.get() is failed
    assert roles(chat) == ["user", "assistant", "notice"]
    partial_html, notice = transcript(chat)[1:]
    assert render_markdown(failed.text) in partial_html and "pk-marker-failed" in partial_html
    assert "ProviderError" in notice and "mid-answer" in notice

    retry = chat._messages.children[-1].children[1]
    assert retry.description == "Retry"
    retry.click()
    again = await asyncio.wait_for(replies.get(), 10)
    assert again.status is StreamStatus.FINISHED and again.text == ANSWER
    assert retry.disabled
    # Nothing shown before is lost: partial reply and notice stay, the retry follows.
    assert roles(chat) == ["user", "assistant", "notice", "user", "assistant"]
    assert transcript(chat)[1] == partial_html
    assert [m.status for m in chat.history] == [None, "failed", None, None]


async def test_a_failure_before_the_first_chunk_is_shown_and_nothing_is_saved() -> None:
    pipe, _ = make_pipe(Scenario(ANSWER, fault=Fault(kind="rate_limit", times=5, retry_after=0)))
    chat = Chat(pipe, session_id="limited")
    result = await chat.send("Hi")
    assert result.status is StreamStatus.FAILED and result.text == ""
    assert roles(chat) == ["user", "assistant", "notice"]
    assert "RateLimitError" in transcript(chat)[-1]
    assert chat.history == [] and await pipe.state_store.load("limited") == []
    result = await chat.retry()
    assert result.status is StreamStatus.FINISHED
    assert roles(chat) == ["user", "assistant", "notice", "user", "assistant"]
    assert len(chat.history) == 2


async def test_opening_a_chat_on_an_existing_session_shows_its_history() -> None:
    pipe, _ = make_pipe(Scenario(LONG))
    await pipe.execute_with_context("old", "user", "First question")
    stream = await pipe.execute_stream_with_context("old", "user", "Second question")
    stream.stop()
    async for _ in stream:
        pass
    chat = Chat(pipe, session_id="old")
    history = await chat.refresh()
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[-1].status == "stopped"
    assert roles(chat) == ["user", "assistant", "user", "assistant"]
    assert "pk-marker-stopped" in transcript(chat)[-1]
    assert "4 messages" in chat._footer.value


async def test_messages_from_pipeline_calls_on_the_session_appear_in_order() -> None:
    """A %%stream cell is a pipeline call on the shared store: the chat shows its turns."""
    pipe, provider = make_pipe(Scenario("From the cell.", match="cell"), Scenario("From the chat."))
    chat = Chat(pipe, session_id="shared")
    await chat.send("chat one")
    await pipe.execute_with_context("shared", "user", "cell one")  # like %%stream --session shared
    await chat.refresh()
    contents = [m.content for m in chat.history]
    assert contents == ["chat one", "From the chat.", "cell one", "From the cell."]
    assert roles(chat) == ["user", "assistant"] * 2

    # A cell's turn that holds the session while the chat sends: the chat's turn
    # waits for it, and the cell's messages are shown before the chat's own.
    provider.chunk_delay = 0.01
    cell = asyncio.create_task(pipe.execute_with_context("shared", "user", "cell two"))
    await wait_for(lambda: provider.active == 1)
    await chat.send("chat two")
    await cell
    contents = [m.content for m in chat.history]
    assert contents[4:] == ["cell two", "From the cell.", "chat two", "From the chat."]
    texts = transcript(chat)
    assert len(texts) == 8
    assert "cell two" in texts[4] and "From the cell." in texts[5] and "chat two" in texts[6]
    # ...and the other way round: a chat turn is in the store for the next cell.
    assert (await pipe.state_store.load("shared"))[-1].content == "From the chat."


async def test_without_a_pipeline_the_chat_shares_the_notebook_default() -> None:
    reset_defaults()
    try:
        defaults().update(provider_options={"chunk_delay": 0, "first_chunk_delay": 0})
        chat = Chat(session_id="nb")
        assert chat.pipeline is default_pipeline()
        await default_pipeline().execute_with_context("nb", "user", "write a haiku")
        await chat.refresh()
        assert [m.role for m in chat.history] == ["user", "assistant"]
        await chat.send("and another")
        assert len(await default_pipeline().state_store.load("nb")) == 4
    finally:
        reset_defaults()


async def test_export_json_and_markdown(tmp_path: Any) -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="export-me", title="Ask the docs")
    await chat.send("Question?")
    data = json.loads(chat.export())
    assert data["session_id"] == "export-me" and data["title"] == "Ask the docs"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["content"] == ANSWER
    assert data["model"] == "mock-chat" and data["usage"]["output_tokens"] > 0

    path = tmp_path / "chat.md"
    md = chat.export(format="markdown", path=path)
    assert path.read_text(encoding="utf-8") == md
    assert md.startswith("# Ask the docs\n")
    assert "### You\n\nQuestion?\n" in md and f"### Assistant\n\n{ANSWER}\n" in md
    with pytest.raises(Exception, match="json"):
        chat.export(format="pdf")


async def test_several_chats_stream_at_once_without_mixing_replies() -> None:
    pipe, provider = make_pipe(
        Scenario("ALPHA " * 60, match="alpha"),
        Scenario("BETA " * 60, match="beta"),
        chunk_delay=0.002,
    )
    chats = [Chat(pipe, session_id=f"c{i}") for i in range(3)]
    prompts = ["alpha", "beta", "alpha again"]
    results = await asyncio.gather(*(c.send(p) for c, p in zip(chats, prompts, strict=True)))
    assert max(c.ended for c in provider.calls) > min(c.ended for c in provider.calls)
    for chat, prompt, result in zip(chats, prompts, results, strict=True):
        word = "ALPHA" if prompt.startswith("alpha") else "BETA"
        other = "BETA" if word == "ALPHA" else "ALPHA"
        assert result.text == f"{word} " * 60
        answer = transcript(chat)[-1]
        assert word in answer and other not in answer
        assert [m.content for m in chat.history] == [prompt, result.text]


async def test_front_end_updates_are_throttled_and_the_final_text_is_whole() -> None:
    text = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor " * 20 for i in range(16))
    for delay in (0.0, 0.0001):  # zero-delay (never yields) and yielding per chunk
        pipe, provider = make_pipe(Scenario(text), chunk_delay=delay)
        chat = Chat(pipe, session_id="fast")
        values: list[str] = []

        def watch(change: dict[str, Any], values: list[str] = values) -> None:
            for child in change["new"]:
                reply = isinstance(child, (widgets.HTML, widgets.HTMLMath))
                if reply and "pk-msg-assistant" in child.value:
                    if not getattr(child, "_watched", False):
                        child._watched = True
                        child.observe(lambda c: values.append(c["new"]), names="value")

        chat._messages.observe(watch, names="children")
        started = time.monotonic()
        result = await chat.send("go")
        elapsed = time.monotonic() - started
        chunks = provider.calls[-1].chunks_sent
        assert result.text == text and chunks > 400
        # First render at once, then one per 50 ms at most, a trailing one, the final.
        assert len(values) <= 3 + math.ceil(elapsed / 0.05), (len(values), elapsed)
        assert len(values) < chunks / 10
        assert render_markdown(text) in values[-1]
        assert values[-1] == transcript(chat)[-1]


async def test_enter_and_send_button_schedule_the_turn_from_any_thread() -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="threads")
    replies = reply_waiter(chat)
    # The front end's submit message, handled on another thread: returns at once.
    message = {"event": "submit", "text": "one"}
    keys = chat._box.enhancer
    await asyncio.to_thread(keys._on_front_end_msg, keys, message, [])
    assert (await asyncio.wait_for(replies.get(), 10)).text == ANSWER
    chat.input.value = "two"
    await asyncio.to_thread(chat._send_button.click)
    assert chat.input.value == ""
    await asyncio.wait_for(replies.get(), 10)
    assert [m.content for m in chat.history if m.role == "user"] == ["one", "two"]


async def test_async_reply_callbacks_run_and_can_be_removed() -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="callbacks")
    seen: list[str] = []

    async def later(result: Any) -> None:
        seen.append("async:" + result.status.value)

    def sync(result: Any) -> None:
        seen.append("sync")

    chat.on_reply(later)
    chat.on_reply(sync)
    await chat.send("one")
    await wait_for(lambda: len(seen) == 2)
    chat.on_reply(sync, remove=True)
    await chat.send("two")
    await wait_for(lambda: len(seen) == 3)
    assert sorted(seen) == ["async:finished", "async:finished", "sync"]


async def test_new_chat_starts_a_new_session_and_keeps_the_old_one() -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="topic")
    await chat.send("First")
    new_id = await chat.new_chat()
    assert new_id == "topic-2" == chat.session_id
    assert chat.history == [] and roles(chat) == []
    assert "topic-2" in chat._heading.value
    assert len(await pipe.state_store.load("topic")) == 2  # the old session is kept
    await chat.send("Second")
    forked = await chat.new_chat(fork=True)
    assert forked == "topic-3"
    assert [m.content for m in chat.history] == ["Second", ANSWER]
    assert roles(chat) == ["user", "assistant"]
    # Switching by assigning the trait reloads that session.
    chat.session_id = "topic"
    await chat.refresh()
    assert chat.history[0].content == "First"


async def test_chat_outside_a_loop_captures_the_loop_on_first_use() -> None:
    pipe, _ = make_pipe()
    chat = await asyncio.to_thread(Chat, pipe, session_id="late")  # no running loop there
    assert chat._loop is None
    assert (await chat.send("hi")).status is StreamStatus.FINISHED
    assert chat._loop is asyncio.get_running_loop()


def test_repr_is_cheap_and_traits_are_documented() -> None:
    pipe, _ = make_pipe()
    chat = Chat(pipe, session_id="repr")
    expected = "<Chat 'Chat' session='repr' messages=0 streaming=False model='mock-chat'>"
    assert repr(chat) == expected
    for name in ("title", "session_id", "streaming", "update_interval"):
        assert chat.trait_metadata(name, "help"), name
    chat.update_interval = 0.001
    assert chat.update_interval == 0.05  # never more than 20 refreshes a second
    chat.close()
