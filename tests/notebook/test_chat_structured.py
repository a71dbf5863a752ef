"""The chat with ``schema=`` (the object filling in) and attachments (thumbnails, the Attach
button), and the footer's estimated usage; in-process, as test_chat.py."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from pydantic import BaseModel

from pk_notebook import Chat, Pipeline, ProviderMiddleware, UsageMiddleware
from pk_notebook.providers.mock import MockProvider, Scenario
from pk_notebook.runtime.attachments import KEEP_IN_HISTORY_BYTES, Attachment

from .test_chat import SAVED, check_every_view, send_watching, transcript
from .test_chat_tools import SAID, assert_said_card_answer


class Trip(BaseModel):
    city: str
    days: int
    sights: list[str]


TRIP = '{"city": "Lisbon", "days": 3, "sights": ["Belém Tower", "Alfama", "LX Factory"]}'


def png(width: int = 40, height: int = 30) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def pipe_with(*scenarios: Scenario, **options: Any) -> tuple[Pipeline, MockProvider]:
    provider = MockProvider(list(scenarios), model="mock-chat", **options)
    return Pipeline(UsageMiddleware(), ProviderMiddleware(provider)), provider


async def test_a_schema_chat_shows_the_object_filling_in_then_the_validated_one() -> None:
    pipe, _ = pipe_with(Scenario(TRIP, schema="Trip"), chunk_delay=0.01)
    chat = Chat(pipe, schema=Trip)
    chat.update_interval = 0.05
    seen: list[str] = []
    task = asyncio.ensure_future(chat.send("Plan three days in Lisbon"))
    while not task.done():
        seen.append(transcript(chat)[-1] if transcript(chat) else "")
        await asyncio.sleep(0.01)
    result = task.result()
    assert isinstance(result.parsed, Trip) and result.parsed.days == 3
    live = [s for s in seen if "<strong>city</strong>" in s]
    assert live, "the partial object was never shown"
    # Mid-way: a field still to come shows as "…", and no raw JSON braces.
    assert any("…" in s for s in live)
    assert not any('{"city"' in s for s in live)
    final = transcript(chat)[-1]
    assert "Belém Tower" in final and "LX Factory" in final and "…" not in final


async def test_a_reply_that_does_not_validate_keeps_its_text_and_says_what_failed() -> None:
    pipe, _ = pipe_with(Scenario('{"city": "Lisbon", "days": "many"}', schema="Trip"))
    chat = Chat(pipe, schema=Trip)
    result = await chat.send("Plan a trip")
    assert result.parsed is None and result.error is not None
    html = transcript(chat)
    assert "&quot;many&quot;" in html[-2] or "many" in html[-2]  # the raw JSON, as code
    assert "OutputValidationError: the answer does not match Trip: days:" in html[-1]


async def test_attached_files_show_as_thumbnails_and_reach_the_provider() -> None:
    pipe, provider = pipe_with(Scenario("Got it. {attachments}"))
    chat = Chat(pipe)
    chat.attach((png(), "image/png"))
    assert "1 attached to your next message" in chat._attached.value
    assert 'class="pk-thumb"' in chat._attached.value
    result = await chat.send("What is this?")
    assert chat._attached.value == "" and chat.attachments == []
    sent = provider.calls[-1].request.messages[-1]
    assert [a.mime_type for a in sent.attachments] == ["image/png"]
    assert "I received 1 image" in result.text
    user = transcript(chat)[0]
    assert 'class="pk-thumb"' in user and "What is this?" in user
    # The store keeps the small image with the message; the saved copy shows it too.
    stored = await pipe.state_store.load(chat.session_id)
    assert stored[0].attachments == sent.attachments
    assert 'class="pk-thumb"' in chat._saved_bundle()["text/html"]
    assert len(transcript(chat)) == 2  # not shown twice after the store sync


async def test_a_large_file_is_a_note_in_the_session_and_shown_once() -> None:
    pipe, _ = pipe_with(Scenario("ok"))
    chat = Chat(pipe)
    big = Attachment(
        b"%PDF-1.4\n" + b"x" * (KEEP_IN_HISTORY_BYTES + 10), "application/pdf", "big.pdf"
    )
    await chat.send("Summarise", attachments=big)
    html = transcript(chat)
    assert len(html) == 2 and "big.pdf" in html[0] and 'class="pk-file"' in html[0]
    stored = await pipe.state_store.load(chat.session_id)
    assert "not kept in the session: big.pdf" in stored[0].content


async def test_the_attach_button_turns_uploads_into_attachments() -> None:
    pipe, _ = pipe_with(Scenario("ok"))
    chat = Chat(pipe)
    chat._on_upload(
        {
            "new": (
                {
                    "name": "chart.png",
                    "type": "image/png",
                    "size": 10,
                    "content": memoryview(png()),
                },
            )
        }
    )
    assert [a.name for a in chat.attachments] == ["chart.png"]
    chat._on_upload({"new": ({"name": "notes.txt", "type": "text/plain", "content": b"hi"},)})
    assert "Cannot attach notes.txt" in transcript(chat)[-1]
    chat.clear_attachments()
    assert chat.attachments == []


def test_attaching_something_else_is_one_line() -> None:
    from IPython.core.error import UsageError

    chat = Chat(pipe_with(Scenario("ok"))[0])
    with pytest.raises(UsageError, match="cannot attach a int"):
        chat.attach(42)


async def test_the_footer_labels_estimated_usage() -> None:
    from pk_notebook.providers.mock import MockProvider

    # usage=False: the mock reports no usage, as Ollama's streams do
    provider = MockProvider([Scenario("Four words of answer.")], model="mock-chat", usage=False)
    chat = Chat(Pipeline(UsageMiddleware(), ProviderMiddleware(provider)))
    await chat.send("Hello")
    footer = chat._footer.value
    assert "tokens (estimated)" in footer and "≈" in footer


async def test_a_reopened_schema_chat_shows_stored_answers_as_objects() -> None:
    pipe, _ = pipe_with(Scenario(TRIP, schema="Trip"))
    first = Chat(pipe, schema=Trip, session_id="trips")
    await first.send("Plan three days in Lisbon")
    again = Chat(pipe, schema=Trip, session_id="trips")
    await again.refresh()
    reply = transcript(again)[-1]
    assert "<strong>city</strong>" in reply and '{"city"' not in reply
    assert "<strong>city</strong>" in again._saved_bundle()["text/html"]


class Forecast(BaseModel):
    city: str
    umbrella: bool
    summary: str


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Light rain, 14 °C in {city}"


def forecaster(**more: Any) -> Pipeline:
    """A model that calls get_weather for Paris, then answers with a valid Forecast."""
    pipe, _ = pipe_with(
        Scenario(
            schema="Forecast",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
            answer='{"city": "Paris", "umbrella": true, "summary": "{result}"}',
            **more,
        ),
        chunk_delay=0.005,
    )
    return pipe


async def test_a_tool_call_then_a_schema_answer_shows_the_card_then_the_object() -> None:
    """``Chat(tools=..., schema=...)``: the model calls a tool, then answers with data. The
    bubble (live, saved copy, reopened chat) is the thinking and the tool card with its
    result, then the validated object; the answer's JSON text is never shown."""
    pipe = forecaster(reasoning="I should check the weather first.")
    chat = Chat(pipe, tools=[get_weather], schema=Forecast, session_id="forecast")
    chat.update_interval = 0.02
    result, seen = await send_watching(chat, "Umbrella in Paris?")
    assert result.parsed == Forecast(
        city="Paris", umbrella=True, summary="Light rain, 14 °C in Paris"
    )
    assert [r.status for r in result.tool_results] == ["ok"]

    # Live: the object fills in under the finished card, never as JSON text.
    filling = [s for s in seen if "pk-tool-ok" in s and "<strong>Forecast</strong>" in s]
    assert any("<strong>summary</strong>: …" in s for s in filling), "no partial object shown"
    assert not any("&quot;umbrella&quot;" in s or '"umbrella"' in s for s in seen)

    def assert_card_then_object(bubble: str) -> None:
        assert bubble.count('class="pk-msg pk-msg-assistant"') == 1
        assert '<details class="pk-thinking"><summary>Thinking · 33 characters' in bubble
        assert '<details class="pk-tool pk-tool-ok">' in bubble and " open" not in bubble
        assert "<strong>get_weather</strong>" in bubble
        assert "<pre>Light rain, 14 °C in Paris</pre>" in bubble  # the card keeps its result
        assert (
            "<p><strong>Forecast</strong></p>\n<ul>\n<li><strong>city</strong>: Paris</li>\n"
            "<li><strong>umbrella</strong>: <code>true</code></li>\n"
            "<li><strong>summary</strong>: Light rain, 14 °C in Paris</li>\n</ul>"
        ) in bubble
        assert bubble.index("pk-thinking") < bubble.index("pk-tool-ok") < bubble.index("Forecast")
        assert "&quot;umbrella&quot;" not in bubble and '"umbrella"' not in bubble

    await check_every_view(chat, assert_card_then_object, tools=[get_weather], schema=Forecast)


async def test_text_said_before_a_tool_call_then_a_schema_answer_keeps_the_text() -> None:
    """``Chat(tools=..., schema=...)`` with a model that writes a sentence before its tool
    call: one turn showing the sentence, the card with its result, then the validated
    object, live, in the saved copy and in a reopened chat."""
    chat = Chat(forecaster(response=SAID), tools=[get_weather], schema=Forecast)
    chat.update_interval = 0.02
    result, seen = await send_watching(chat, "Umbrella in Paris?")
    assert result.parsed == Forecast(
        city="Paris", umbrella=True, summary="Light rain, 14 °C in Paris"
    )
    # Live: the object fills in under the card, the sentence above it.
    filling = [s for s in seen if "pk-tool-ok" in s and "<strong>Forecast</strong>" in s]
    assert filling, "no partial object shown under the card"
    for bubble in filling:
        assert bubble.index(f"<p>{SAID}</p>") < bubble.index("pk-tool-ok")

    def assert_said_card_object(bubble: str) -> None:
        at_object = assert_said_card_answer(
            bubble, output="Light rain, 14 °C in Paris", answer="<p><strong>Forecast</strong></p>"
        )
        assert "<li><strong>umbrella</strong>: <code>true</code></li>" in bubble[at_object:]
        assert '"umbrella"' not in bubble and "&quot;umbrella&quot;" not in bubble

    await check_every_view(chat, assert_said_card_object, tools=[get_weather], schema=Forecast)


async def test_an_answer_that_does_not_validate_is_json_code_live_saved_and_reopened() -> None:
    pipe, _ = pipe_with(Scenario('{"city": "Lisbon", "days": "many"}', schema="Trip"))
    chat = Chat(pipe, schema=Trip, session_id="bad-trip")
    result = await chat.send("Plan a trip")
    assert result.parsed is None and result.error is not None
    code = '<pre><code class="language-json">'
    live = transcript(chat)[1]
    assert code in live and "many" in live
    saved = chat._saved_bundle()["text/html"]
    assert code in saved[saved.index(SAVED) :]
    again = Chat(pipe, schema=Trip, session_id="bad-trip")
    await again.refresh()
    assert code in transcript(again)[1] and "many" in transcript(again)[1]
    # Prose in the session (a %%stream cell's answer) stays prose, not JSON code.
    assert again._stored_answer("Plain words.", None) == "Plain words."
    chat.close()
    again.close()
