"""The chat with tools and thinking: parts in the assistant's bubble, Run / Deny, a reload."""

from __future__ import annotations

import asyncio
from typing import Any

import ipywidgets as widgets
import pytest
from IPython.core.error import UsageError

from pk_notebook import Chat, Pipeline, ProviderMiddleware, StreamStatus
from pk_notebook.notebook.chat_view import saved_transcript_html
from pk_notebook.providers.mock import MockProvider

from .test_chat import check_every_view, roles, send_watching, transcript, wait_for

PROMPT = "Should I take an umbrella in Paris?"


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Light rain in {city}"


def demo_pipe() -> Pipeline:
    return Pipeline(ProviderMiddleware(MockProvider.demo(chunk_delay=0)))


async def test_the_bubble_shows_thinking_and_a_card_and_the_turn_is_one_entry() -> None:
    pipe = demo_pipe()
    chat = Chat(pipe, session_id="tools-chat", tools=[get_weather])
    result = await chat.send(PROMPT)
    assert result.status is StreamStatus.FINISHED
    assert [r.status for r in result.tool_results] == ["ok"]
    assert roles(chat) == ["user", "assistant"], "tool messages live inside the reply"
    bubble = transcript(chat)[1]
    assert bubble.count('<details class="pk-thinking">') == 2
    assert '<details class="pk-tool pk-tool-ok">' in bubble and "Light rain in Paris" in bubble
    assert bubble.index("pk-tool") < bubble.index("I asked the")
    assert " open" not in bubble
    # A second chat on the same session reads the stored turn the same way.
    again = Chat(pipe, session_id="tools-chat")
    await again.refresh()
    assert roles(again) == ["user", "assistant"]
    assert '<details class="pk-tool pk-tool-ok">' in transcript(again)[1]
    saved = saved_transcript_html(again.history, title="t", session_id="tools-chat", live_class="x")
    assert saved.count('class="pk-msg pk-msg-assistant"') == 1 and "pk-tool-ok" in saved
    chat.close()
    again.close()


def approval_box(chat: Chat) -> Any:
    for child in chat._messages.children:
        if isinstance(child, widgets.HBox) and "pk-chat-approve" in child._dom_classes:
            return child
    return None


@pytest.mark.parametrize(("button", "status"), [(1, "ok"), (2, "denied")])
async def test_approval_mode_asks_with_run_and_deny(button: int, status: str) -> None:
    chat = Chat(demo_pipe(), tools=[get_weather], approve=True)
    task = asyncio.ensure_future(chat.send(PROMPT))
    await wait_for(lambda: approval_box(chat) is not None)
    box = approval_box(chat)
    assert "get_weather" in box.children[0].value and "Paris" in box.children[0].value
    await wait_for(lambda: "waiting for approval" in transcript(chat)[1])  # the card says so
    box.children[button].click()
    result = await task
    assert [r.status for r in result.tool_results] == [status]
    assert approval_box(chat) is None, "the question goes once answered"
    chat.close()


async def test_an_approve_function_decides_by_itself() -> None:
    seen: list[str] = []

    async def no(call: Any) -> bool:
        seen.append(call.name)
        return False

    chat = Chat(demo_pipe(), tools=[get_weather], approve=no)
    result = await chat.send(PROMPT)
    assert seen == ["get_weather"] and result.tool_results[0].status == "denied"
    assert "pk-tool-denied" in transcript(chat)[1]
    chat.close()


async def test_stop_while_waiting_for_approval() -> None:
    chat = Chat(demo_pipe(), tools=[get_weather], approve=True)
    task = asyncio.ensure_future(chat.send(PROMPT))
    await wait_for(lambda: approval_box(chat) is not None)
    chat.stop()
    result = await asyncio.wait_for(task, 10)
    assert result.status is StreamStatus.STOPPED
    assert approval_box(chat) is None
    chat.close()


def test_bad_tools_are_one_line() -> None:
    with pytest.raises(UsageError, match="approve= takes True"):
        Chat(demo_pipe(), tools=[get_weather], approve="yes")  # type: ignore[arg-type]

    def untyped(*args: Any) -> str:
        return ""

    with pytest.raises(UsageError, match="args"):
        Chat(demo_pipe(), tools=[untyped])


SAID = "Let me check the weather first."


def chatty_pipe() -> Pipeline:
    """A model that says a sentence, calls get_weather in the same answer, then answers."""
    from pk_notebook.providers.mock import Scenario

    return Pipeline(
        ProviderMiddleware(
            MockProvider(
                [
                    Scenario(
                        response=SAID,
                        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
                        answer="Take an umbrella: {result}.",
                    )
                ],
                chunk_delay=0.01,
            )
        )
    )


def assert_said_card_answer(
    html: str,
    *,
    output: str = "Light rain in Paris",
    answer: str = "<p>Take an umbrella: Light rain in Paris.</p>",
) -> int:
    """One assistant turn: the sentence, the card with its result (ok), then the answer
    (where it starts is returned)."""
    assert html.count('class="pk-msg pk-msg-assistant"') == 1
    at_said = html.index(f"<p>{SAID}</p>")
    at_card = html.index('<details class="pk-tool pk-tool-ok">')
    at_answer = html.index(answer)
    assert at_said < at_card < at_answer
    assert '<span class="pk-tool-mark">✓</span> <strong>get_weather</strong>' in html
    assert f"<pre>{output}</pre>" in html[at_card:at_answer]  # the card keeps its result
    assert "first.Take" not in html and "stopped" not in html and 'class="pk-marker' not in html
    return at_answer


async def test_text_said_before_a_tool_call_stays_in_its_place_in_one_turn(
    ip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model writes a sentence, calls a tool, then answers: one assistant turn showing
    the sentence, the card with its result, then the answer; live, in the saved copy, in a
    chat reopened on the session and in ``%stream history``."""
    pipe = chatty_pipe()
    chat = Chat(pipe, session_id="said-chat", tools=[get_weather])
    chat.update_interval = 0.01
    result, seen = await send_watching(chat, "Umbrella in Paris?")
    assert [r.status for r in result.tool_results] == ["ok"]
    # Live, while the answer streams: the sentence stays above the card, never glued on.
    assert any("pk-tool-ok" in s and "Take an" in s for s in seen), seen[-3:]
    for bubble in seen:
        if "Take an" in bubble:
            assert bubble.index(SAID) < bubble.index("pk-tool") < bubble.index("Take an")
        assert "first.Take" not in bubble
    # The reply, its saved copy (the notebook file, nbconvert, GitHub), a reopened chat.
    await check_every_view(chat, assert_said_card_answer, tools=[get_weather])

    # %stream history: the same one turn, in Markdown and in plain text.
    from pk_notebook.notebook import magic

    shown: list[dict[str, str]] = []
    monkeypatch.setattr(magic, "display", lambda bundle, **_: shown.append(bundle))
    ip.user_ns["said_pipe"] = pipe
    ip.run_line_magic("stream", "history said-chat --pipeline said_pipe")
    md, plain = shown[-1]["text/markdown"], shown[-1]["text/plain"]
    assert md.count("**assistant**") == 1 and "**tool**" not in md
    card = md.index('<details class="pk-tool pk-tool-ok">')
    assert md.index(SAID) < card < md.index("Take an umbrella: Light rain in Paris.")
    assert "✓ <strong>get_weather</strong>" in md
    assert "```\nLight rain in Paris\n```" in md[card:] and "first.Take" not in md
    assert plain.count("[assistant]") == 1 and "[tool]" not in plain
    assert plain.endswith(
        f'[assistant]\n{SAID}\n\n✓ get_weather {{"city": "Paris"}}\n  → Light rain in Paris'
        "\n\nTake an umbrella: Light rain in Paris."
    )
