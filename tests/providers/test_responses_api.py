"""The OpenAI Responses API (``OpenAIResponsesProvider``) against the fake server's
``responses`` dialect, through the real Pipeline: text, reasoning summaries, a
function-call round trip through the tool loop, the terminal states (completed,
incomplete, failed), in-stream errors, every fault the Chat Completions path
handles, and the exact request body."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import BaseModel

from pk_notebook import (
    ConfigurationError,
    NetworkError,
    Pipeline,
    ProtocolError,
    ProviderError,
    ProviderMiddleware,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamStatus,
    StreamTimeout,
    TruncatedStream,
)
from pk_notebook.providers import (
    OpenAIProvider,
    OpenAIResponsesProvider,
    StreamLimits,
    create_provider,
)
from pk_notebook.runtime.attachments import Attachment
from pk_notebook.runtime.tools import ToolSpec
from pk_notebook.runtime.types import (
    Delta,
    Finish,
    Message,
    ProviderConfig,
    Request,
    ToolCall,
    ToolCallDelta,
)
from pk_notebook.testing import FakeProviderServer, Script

TEXT = "one two three four five"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n" + b"1 0 obj\n" * 8


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"{city}: light rain, 14 C"


def pipeline(server: FakeProviderServer, **options: Any) -> Pipeline:
    retry = options.pop("retry", RetryPolicy(max_attempts=1))
    pipe_options = {k: options.pop(k) for k in ("idle_timeout",) if k in options}
    provider = OpenAIResponsesProvider("fake-model", base_url=server.base_url, **options)
    return Pipeline(ProviderMiddleware(provider, retry=retry), **pipe_options)


async def run(pipe: Pipeline, prompt: str = "hi", **options: Any) -> tuple[Any, Any]:
    """Read a call to the end; return (result, error raised while reading)."""
    stream = await pipe.execute_stream("user", prompt, **options)
    error = None
    try:
        async for _ in stream:
            pass
    except Exception as exc:
        error = exc
    return stream.result, error


# --- choosing it --------------------------------------------------------------------------


def test_selected_by_api_on_the_openai_factory_and_by_its_own_name() -> None:
    chosen = create_provider("openai:gpt-5-mini", api="responses", api_key="sk-test")
    assert isinstance(chosen, OpenAIResponsesProvider)
    assert chosen.model == "gpt-5-mini" and chosen.url == "https://api.openai.com/v1/responses"
    assert isinstance(create_provider("openai", api_key="sk-test"), OpenAIProvider)
    assert isinstance(create_provider("openai", api="chat", api_key="sk-test"), OpenAIProvider)
    named = create_provider("openai-responses:gpt-5", api_key="sk-test")
    assert isinstance(named, OpenAIResponsesProvider) and named.name == "openai-responses"
    with pytest.raises(ConfigurationError, match="api must be"):
        create_provider("openai", api="assistants", api_key="sk-test")
    with pytest.raises(ConfigurationError, match="reasoning_summary"):
        OpenAIResponsesProvider("m", api_key="k", reasoning_summary="verbose")


# --- the answer ---------------------------------------------------------------------------


async def test_text_usage_and_model(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(Script(TEXT, usage=(12, 5), model="gpt-5-mini-2025-08-07"))
    async with pipeline(fake_server) as pipe:
        result, error = await run(pipe)
    assert error is None and result.status is StreamStatus.FINISHED
    assert result.text == TEXT and result.finish_reason == "stop"
    assert result.model == "gpt-5-mini-2025-08-07"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 5)
    assert fake_server.requests[-1].path == "/v1/responses"


async def test_reasoning_summary_is_reasoning(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(Script(TEXT, reasoning="First I think. Then I answer.", usage=(7, 5)))
    async with pipeline(fake_server, reasoning_summary="auto") as pipe:
        result, error = await run(pipe)
    assert error is None
    assert result.reasoning == "First I think. Then I answer."
    assert result.text == TEXT
    assert result.usage.reasoning_tokens == 6 and result.usage.output_tokens == 11
    assert fake_server.requests[-1].json["reasoning"] == {"summary": "auto"}


async def test_function_call_round_trip_through_the_tool_loop(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(
        Script(
            "",
            reasoning="The user asks about rain.",
            tool_calls=[{"id": "call_abc", "name": "get_weather", "arguments": {"city": "Paris"}}],
        )
    )
    fake_server.enqueue(Script("It is raining in Paris."))
    async with pipeline(fake_server) as pipe:
        result = await pipe.execute("user", "Is it raining in Paris?", tools=[get_weather])
    assert result.text == "It is raining in Paris." and result.finish_reason == "stop"
    first, second = (r.json for r in fake_server.requests[-2:])
    assert first["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": first["tools"][0]["parameters"],
            "strict": False,
        }
    ]
    assert first["tools"][0]["parameters"]["properties"]["city"]["type"] == "string"
    assert second["input"] == [
        {"role": "user", "content": "Is it raining in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_abc",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call_output",
            "call_id": "call_abc",
            "output": "Paris: light rain, 14 C",
        },
    ]
    assert "include" not in second  # encrypted reasoning is not asked for by default


async def test_tool_call_fragments_stream_as_tool_call_deltas(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(
        Script(
            "",
            tool_calls=[("call_1", "f", '{"a": 1}'), ("call_2", "g", '{"b": [2, 3]}')],
        )
    )
    provider = OpenAIResponsesProvider("m", base_url=fake_server.base_url)
    events = [e async for e in provider.stream(Request((Message("user", "hi"),), ProviderConfig()))]
    await provider.aclose()
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    assert fragments[0] == ToolCallDelta(0, "call_1", "f", "")
    assert "".join(f.arguments for f in fragments if f.index == 0) == '{"a": 1}'
    assert "".join(f.arguments for f in fragments if f.index == 1) == '{"b": [2, 3]}'
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in finish.tool_calls] == [
        ("call_1", "f", '{"a": 1}'),
        ("call_2", "g", '{"b": [2, 3]}'),
    ]


async def test_encrypted_reasoning_goes_back_before_the_calls(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(
        Script("", reasoning="Need the weather.", tool_calls=[("call_1", "get_weather", "{}")])
    )
    fake_server.enqueue(Script("Done."))
    async with pipeline(fake_server, encrypted_reasoning=True) as pipe:
        await pipe.execute("user", "Weather?", tools=[get_weather])
    first, second = (r.json for r in fake_server.requests[-2:])
    assert first["include"] == ["reasoning.encrypted_content"]
    kinds = [item.get("type", item.get("role")) for item in second["input"]]
    assert kinds == ["user", "reasoning", "function_call", "function_call_output"]
    reasoning = second["input"][1]
    assert reasoning["encrypted_content"].startswith("gAAAA") and "provider" not in reasoning


async def test_incomplete_is_a_finish_reason(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(Script(TEXT, finish_reason="max_output_tokens", usage=(9, 5)))
    async with pipeline(fake_server) as pipe:
        result, error = await run(pipe, config=ProviderConfig(max_tokens=5))
    assert error is None and result.status is StreamStatus.FINISHED
    assert result.finish_reason == "max_output_tokens" and result.text == TEXT
    assert result.usage.output_tokens == 5
    assert fake_server.requests[-1].json["max_output_tokens"] == 5


async def test_failed_is_a_typed_error_with_the_partial_text(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(Script(TEXT, finish_reason="failed", error_message="The model crashed."))
    async with pipeline(fake_server) as pipe:
        result, error = await run(pipe)
    assert isinstance(error, ServerError) and error.code == "server_error"
    assert "The model crashed." in str(error) and error.partial_text == TEXT
    assert result.status is StreamStatus.FAILED and result.text == TEXT

    fake_server.enqueue(
        Script("a b", finish_reason="failed", error_type="invalid_prompt", error_message="No.")
    )
    async with pipeline(fake_server) as pipe:
        _, error = await run(pipe)
    assert type(error) is ProviderError and error.code == "invalid_prompt"
    assert not error.retryable and error.partial_text == "a b"


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [("server_error", ServerError), ("rate_limit_exceeded", RateLimitError)],
)
async def test_in_stream_error_event(
    fake_server: FakeProviderServer, error_type: str, expected: type
) -> None:
    fake_server.enqueue(Script(TEXT, fault="error", after=2, error_type=error_type))
    async with pipeline(fake_server) as pipe:
        result, error = await run(pipe)
    assert type(error) is expected and error.code == error_type
    assert error.partial_text == "one two" and result.text == "one two"
    assert result.status is StreamStatus.FAILED
    assert error.retryable


@pytest.mark.parametrize(
    ("script", "error_type", "status"),
    [
        pytest.param(Script(TEXT, fault="truncate", after=2), TruncatedStream,
                     StreamStatus.TRUNCATED, id="eof-without-response.completed"),
        pytest.param(Script(TEXT, fault="disconnect", after=2), NetworkError,
                     StreamStatus.FAILED, id="drop-mid-stream"),
        pytest.param(Script(TEXT, fault="malformed", after=2), ProtocolError,
                     StreamStatus.FAILED, id="malformed-json"),
        pytest.param(Script(TEXT, fault="stall", after=2), StreamTimeout,
                     StreamStatus.TIMED_OUT, id="idle-timeout"),
        pytest.param(Script(TEXT, fault="keepalive_stall", after=2, pace=0.02), StreamTimeout,
                     StreamStatus.TIMED_OUT, id="keep-alive-stall"),
    ],
)  # fmt: skip
async def test_faults_keep_the_partial_text(
    fake_server: FakeProviderServer, script: Script, error_type: type, status: StreamStatus
) -> None:
    fake_server.enqueue(script)
    async with pipeline(fake_server, idle_timeout=0.3) as pipe:
        result, error = await run(pipe)
    assert isinstance(error, error_type), error
    assert result.status is status
    assert result.text == "one two" and error.partial_text == "one two"


async def test_truncation_after_the_whole_text_is_still_truncated(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(Script(TEXT, fault="truncate", after=5))  # every piece, no terminal event
    async with pipeline(fake_server) as pipe:
        result, error = await run(pipe)
    assert isinstance(error, TruncatedStream) and result.status is StreamStatus.TRUNCATED
    assert result.text == TEXT


async def test_retries_only_before_the_first_output(fake_server: FakeProviderServer) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
    # an error event before any text (and a 429 before the stream): retried
    fake_server.enqueue(Script(fault="rate_limit", retry_after="0"))
    fake_server.enqueue(Script(TEXT, fault="error", after=0))
    fake_server.enqueue(Script(TEXT))
    async with pipeline(fake_server, retry=retry) as pipe:
        result, error = await run(pipe)
    assert error is None and result.text == TEXT and result.attempts == 3
    # after text was shown: never retried
    fake_server.enqueue(Script(TEXT, fault="error", after=2))
    fake_server.enqueue(Script(TEXT))
    before = len(fake_server.requests)
    async with pipeline(fake_server, retry=retry) as pipe:
        result, error = await run(pipe)
    assert isinstance(error, ServerError) and result.text == "one two"
    assert len(fake_server.requests) == before + 1


# --- the request --------------------------------------------------------------------------


class Trip(BaseModel):
    city: str
    days: int


async def test_the_exact_request_body(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(Script('{"city": "Paris", "days": 3}'))
    figure = Attachment(PNG, "image/png", "figure.png")
    paper = Attachment(PDF, "application/pdf", "paper.pdf")
    async with pipeline(fake_server) as pipe:  # not api.openai.com: images only by default
        with pytest.raises(ConfigurationError, match="accepts="):
            await pipe.execute("user", "Read this.", attachments=[paper])
    async with pipeline(
        fake_server,
        system="Be brief.",
        temperature=0.5,
        top_p=0.9,
        reasoning_effort="low",
        accepts=("image", "pdf"),
    ) as pipe:
        result = await pipe.execute(
            "user",
            "Plan a trip from these.",
            attachments=[figure, paper],
            schema=Trip,
            config=ProviderConfig(max_tokens=300),
        )
    assert result.parsed == Trip(city="Paris", days=3)
    assert result.schema_mode == "json_schema"
    body = fake_server.requests[-1].json
    png = "data:image/png;base64," + base64.b64encode(PNG).decode()
    pdf = "data:application/pdf;base64," + base64.b64encode(PDF).decode()
    text_format = body.pop("text")["format"]
    assert body == {
        "model": "fake-model",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Plan a trip from these."},
                    {"type": "input_image", "image_url": png, "detail": "auto"},
                    {"type": "input_file", "filename": "paper.pdf", "file_data": pdf},
                ],
            }
        ],
        "stream": True,
        "instructions": "Be brief.",
        "store": False,
        "reasoning": {"effort": "low"},
        "max_output_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.9,
    }
    assert text_format["type"] == "json_schema" and text_format["name"] == "Trip"
    assert text_format["strict"] is True
    assert text_format["schema"]["additionalProperties"] is False
    assert set(text_format["schema"]["required"]) == {"city", "days"}
    recorded = fake_server.requests[-1]
    assert recorded.content_parts() == [
        {"type": "text", "text": "Plan a trip from these."},
        {"type": "image", "mime_type": "image/png", "data": PNG},
        {"type": "file", "mime_type": "application/pdf", "data": PDF, "name": "paper.pdf"},
    ]
    assert recorded.requested_schema() == {
        "mode": "json_schema",
        "name": "Trip",
        "schema": text_format["schema"],
        "strict": True,
    }
    headers = recorded.headers
    assert headers["accept"] == "text/event-stream"


async def test_history_system_messages_and_tool_choice(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(Script("ok"))
    provider = OpenAIResponsesProvider("m", base_url=fake_server.base_url, store=True)
    history = (
        Message("system", "You are terse."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "w", ""),)),
        Message("tool", "rain", tool_call_id="c1", name="w"),
        Message("assistant", ""),  # nothing to send
    )
    request = Request(
        history,
        ProviderConfig(system="Answer in English."),
        tools=(ToolSpec("w", parameters={"type": "object", "properties": {}}),),
        tool_choice="required",
    )
    events = [e async for e in provider.stream(request)]
    await provider.aclose()
    assert isinstance(events[-1], Finish)
    body = fake_server.requests[-1].json
    assert body["instructions"] == "Answer in English.\n\nYou are terse."
    assert body["store"] is True and body["tool_choice"] == "required"
    assert body["tools"] == [
        {"type": "function", "name": "w", "parameters": {"type": "object", "properties": {}},
         "strict": False}
    ]  # fmt: skip
    assert body["input"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
    ]


async def test_stop_sequences_are_refused(fake_server: FakeProviderServer) -> None:
    async with pipeline(fake_server) as pipe:
        with pytest.raises(ConfigurationError, match="no stop sequences"):
            await pipe.execute("user", "hi", config=ProviderConfig(stop=("END",)))


# --- the parser on its own ----------------------------------------------------------------


def feed(*events: tuple[str, dict[str, Any]] | bytes) -> tuple[list[Any], Any]:
    parser = OpenAIResponsesProvider("m", api_key="sk-test").parser(ProviderConfig())
    out: list[Any] = []
    for event in events:
        if isinstance(event, bytes):
            raw = event
        else:
            kind, payload = event
            raw = f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()
        out += parser.feed(raw)
        if parser.done or parser.error is not None:
            break
    return out, parser


def test_refusal_is_text_with_finish_reason_refusal() -> None:
    out, parser = feed(
        ("response.refusal.delta", {"output_index": 0, "delta": "I can't help "}),
        ("response.refusal.delta", {"output_index": 0, "delta": "with that."}),
        ("response.completed", {"response": {"status": "completed", "output": []}}),
    )
    assert "".join(e.text for e in out if isinstance(e, Delta)) == "I can't help with that."
    assert out[-1].reason == "refusal" and parser.done


def test_summary_parts_are_separated_and_unknown_events_ignored() -> None:
    out, parser = feed(
        ("response.reasoning_summary_part.added", {"output_index": 0, "summary_index": 0}),
        ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "**A**"}),
        ("response.reasoning_summary_part.added", {"output_index": 0, "summary_index": 1}),
        ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "**B**"}),
        ("response.some_future_event", {"whatever": [1, 2]}),
        b"data: [DONE]\n\n",
    )
    assert "".join(e.reasoning for e in out if isinstance(e, Delta)) == "**A**\n\n**B**"
    assert parser.error is None and not parser.done
    assert parser.end() is None  # no terminal event: truncated, never a Finish


@pytest.mark.parametrize(
    "event",
    [
        ("response.output_text.delta", {"delta": 42}),
        ("response.function_call_arguments.delta", {"output_index": "0", "delta": "{"}),
        ("response.completed", {"response": "done"}),
        ("response.completed", {"response": {"usage": {"input_tokens": "many"}}}),
        ("response.output_item.added", {"output_index": 0, "item": {"type": "function_call",
                                                                     "call_id": 7}}),
    ],
)  # fmt: skip
def test_values_of_the_wrong_type_are_protocol_errors(event: tuple[str, dict[str, Any]]) -> None:
    _, parser = feed(("response.output_text.delta", {"delta": "so far"}), event)
    assert isinstance(parser.error, ProtocolError)
    assert parser.error.raw is not None and event[0] in parser.error.raw
    assert parser.error.partial_text == "so far"


def test_an_error_never_shows_the_key() -> None:
    _, parser = feed(
        ("response.output_text.delta", {"delta": "x"}),
        ("error", {"code": "invalid_api_key", "message": "bad key sk-test", "param": None}),
    )
    error = parser.error
    assert isinstance(error, ProviderError)
    assert "sk-test" not in str(error) and "sk-test" not in (error.body or "")


def test_the_answer_and_tool_caps_hold() -> None:
    limits = StreamLimits(max_answer_chars=10, max_tool_chars=200)
    provider = OpenAIResponsesProvider("m", api_key="sk-test", limits=limits)
    parser = provider.parser(ProviderConfig())
    parser.feed(b'data: {"type":"response.output_text.delta","delta":"0123456789abc"}\n\n')
    assert isinstance(parser.error, ProtocolError) and "max_answer_chars" in str(parser.error)
    parser = provider.parser(ProviderConfig())
    added = {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
    }
    parser.feed(f"data: {json.dumps(added)}\n\n".encode())
    piece = {
        "type": "response.function_call_arguments.delta",
        "output_index": 0,
        "delta": "x" * 300,
    }
    parser.feed(f"data: {json.dumps(piece)}\n\n".encode())
    assert isinstance(parser.error, ProtocolError) and "max_tool_chars" in str(parser.error)
