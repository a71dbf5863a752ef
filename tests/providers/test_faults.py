"""Every fault the fake server can inject ends in the right typed error, with the
partial text kept, for each provider dialect."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest

from pk_notebook import (
    AuthenticationError,
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
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.providers._http import parse_retry_after
from pk_notebook.testing import FakeProviderServer, Script

pytestmark = pytest.mark.usefixtures("each_transport")

PROVIDERS = [
    pytest.param(OpenAIProvider, id="openai"),
    pytest.param(AnthropicProvider, id="anthropic"),
    pytest.param(GeminiProvider, id="gemini"),
]
TEXT = "one two three four five"


def pipeline(server: FakeProviderServer, cls: type, **options: Any) -> Pipeline:
    retry = options.pop("retry", RetryPolicy(max_attempts=1))
    provider = cls("fake-model", base_url=server.base_url)
    return Pipeline(ProviderMiddleware(provider, retry=retry), **options)


async def run(pipe: Pipeline) -> tuple[Any, BaseException | None]:
    """Read a call to the end; return (result, error raised while reading)."""
    try:
        stream = await pipe.execute_stream("user", "hi")
    except BaseException as exc:
        return None, exc
    error = None
    try:
        async for _ in stream:
            pass
    except BaseException as exc:
        error = exc
    return stream.result, error


@pytest.fixture(params=PROVIDERS)
def cls(request: pytest.FixtureRequest) -> type:
    return request.param


async def test_complete_answer(fake_server: FakeProviderServer, cls: type) -> None:
    fake_server.default = Script(TEXT, reasoning="think first")
    pipe = pipeline(fake_server, cls)
    result, error = await run(pipe)
    await pipe.shutdown()
    assert error is None and result.status is StreamStatus.FINISHED
    assert result.text == TEXT and result.reasoning == "think first"
    assert result.usage.output_tokens == 5 and result.attempts == 1


async def test_tool_calls(fake_server: FakeProviderServer, cls: type) -> None:
    fake_server.default = Script(
        "",
        tool_calls=[("call_1", "f", '{"a": 1}'), ("call_2", "g", '{"b": [2]}')],
        finish_reason="tool_calls",
    )
    pipe = pipeline(fake_server, cls)
    result, error = await run(pipe)
    await pipe.shutdown()
    assert error is None
    assert [(t.name, t.arguments.replace(" ", "")) for t in result.tool_calls] == [
        ("f", '{"a":1}'),
        ("g", '{"b":[2]}'),
    ]


@pytest.mark.parametrize(
    ("script", "error_type", "status"),
    [
        pytest.param(
            Script(TEXT, fault="drop", after=2),
            NetworkError,
            StreamStatus.FAILED,
            id="drop-mid-stream",
        ),
        pytest.param(
            Script(TEXT, fault="eof", after=2),
            TruncatedStream,
            StreamStatus.TRUNCATED,
            id="eof-without-done",
        ),
        pytest.param(
            Script(TEXT, fault="malformed", after=2),
            ProtocolError,
            StreamStatus.FAILED,
            id="malformed-json",
        ),
        pytest.param(
            Script(TEXT, fault="stream_error", after=2),
            ServerError,
            StreamStatus.FAILED,
            id="in-stream-error",
        ),
        pytest.param(
            Script(TEXT, fault="stall", after=2),
            StreamTimeout,
            StreamStatus.TIMED_OUT,
            id="silent-stall",
        ),
        pytest.param(
            Script(TEXT, fault="keepalive_stall", after=2, pace=0.02),
            StreamTimeout,
            StreamStatus.TIMED_OUT,
            id="keep-alive-stall",
        ),
    ],
)
async def test_mid_stream_faults_keep_partial_text(
    fake_server: FakeProviderServer,
    cls: type,
    script: Script,
    error_type: type,
    status: StreamStatus,
) -> None:
    fake_server.enqueue(script)
    pipe = pipeline(fake_server, cls, idle_timeout=0.3)
    result, error = await run(pipe)
    await pipe.shutdown()
    assert isinstance(error, error_type), error
    assert result.status is status
    assert result.text == "one two" and error.partial_text == "one two"
    if isinstance(error, ProtocolError):
        assert error.raw is not None and "unfinished" in error.raw
    if script.fault in ("stall", "keepalive_stall"):
        assert error.kind == "idle"
        assert await fake_server.requests[-1].until_ended(2)
        assert fake_server.requests[-1].disconnected


async def test_anthropic_overloaded_event_is_a_server_error(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(
        Script(
            TEXT,
            fault="stream_error",
            after=1,
            error_type="overloaded_error",
            error_message="Overloaded",
        )
    )
    pipe = pipeline(fake_server, AnthropicProvider)
    _, error = await run(pipe)
    await pipe.shutdown()
    assert isinstance(error, ServerError) and error.retryable
    assert error.code == "overloaded_error" and error.partial_text == "one"


@pytest.mark.parametrize(
    ("script", "error_type"),
    [
        pytest.param(Script(fault="json_error", status=400), ProviderError, id="json-error-400"),
        pytest.param(
            Script(fault="json_error", status=401), AuthenticationError, id="json-error-401"
        ),
        pytest.param(Script(fault="json_error", status=503), ServerError, id="json-error-503"),
        pytest.param(
            Script(fault="json_error", status=200), ProviderError, id="json-error-with-200"
        ),
        pytest.param(Script(fault="html"), ProtocolError, id="html-body"),
        pytest.param(Script(fault="html", status=502), ServerError, id="html-502"),
        pytest.param(Script(fault="rate_limit", retry_after="30"), RateLimitError, id="429"),
    ],
)
async def test_error_responses_before_the_stream(
    fake_server: FakeProviderServer, cls: type, script: Script, error_type: type
) -> None:
    fake_server.enqueue(script)
    pipe = pipeline(fake_server, cls)
    result, error = await run(pipe)
    await pipe.shutdown()
    assert result is None and type(error) is error_type, error
    if isinstance(error, RateLimitError):
        assert error.retry_after == 30
    if script.fault == "json_error":
        assert "the fake server was told to fail" in str(error)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"retry-after": "0"}, id="retry-after-seconds"),
        pytest.param({"retry-after-ms": "10"}, id="retry-after-ms"),
        pytest.param(
            {"retry-after": email.utils.formatdate(time.time() - 5, usegmt=True)},
            id="retry-after-date",
        ),
    ],
)
async def test_rate_limit_is_retried_before_the_first_chunk(
    fake_server: FakeProviderServer, headers: dict[str, str]
) -> None:
    fake_server.enqueue(Script(fault="rate_limit", retry_after=None, headers=headers), times=2)
    pipe = pipeline(fake_server, OpenAIProvider, retry=RetryPolicy(max_attempts=3))
    result, error = await run(pipe)
    await pipe.shutdown()
    assert error is None and result.attempts == 3 and result.text


@pytest.mark.parametrize("status", [pytest.param(s, id=str(s)) for s in (408, 409, 500, 503, 529)])
async def test_retryable_statuses_then_success(
    fake_server: FakeProviderServer, status: int
) -> None:
    fake_server.fail_times(2, status=status)
    pipe = pipeline(
        fake_server,
        OpenAIProvider,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.001, jitter=False),
    )
    result, error = await run(pipe)
    await pipe.shutdown()
    assert error is None and result.attempts == 3
    assert len(fake_server.requests) == 3


async def test_too_many_failures_raise_the_last_error(fake_server: FakeProviderServer) -> None:
    fake_server.fail_times(3, status=500)
    pipe = pipeline(
        fake_server,
        OpenAIProvider,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.001, jitter=False),
    )
    _, error = await run(pipe)
    await pipe.shutdown()
    assert isinstance(error, ServerError) and error.status_code == 500


async def test_connection_refused_is_a_network_error() -> None:
    with FakeProviderServer() as server:
        base_url = server.base_url
    provider = OpenAIProvider("m", base_url=base_url)
    pipe = Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))
    with pytest.raises(NetworkError, match="before the answer started"):
        await pipe.execute("user", "hi")
    await pipe.shutdown()


async def test_never_closing_server_finishes_at_done(
    fake_server: FakeProviderServer, cls: type
) -> None:
    fake_server.enqueue(Script(TEXT, fault="no_close"))
    pipe = pipeline(fake_server, cls, idle_timeout=5)
    started = time.monotonic()
    if cls is GeminiProvider:
        # Gemini has no end marker: the end of the body is the end; the idle timeout
        # is what stops a server that never closes.
        await pipe.shutdown()
        pipe = pipeline(fake_server, cls, idle_timeout=0.3)
        result, error = await run(pipe)
        assert isinstance(error, StreamTimeout) and result.text == TEXT
    else:
        result, error = await run(pipe)
        assert error is None and result.status is StreamStatus.FINISHED and result.text == TEXT
        assert time.monotonic() - started < 1.0
    assert await fake_server.requests[-1].until_ended(2)
    assert fake_server.requests[-1].disconnected
    await pipe.shutdown()


async def test_connection_is_reused_after_done(fake_server: FakeProviderServer, cls: type) -> None:
    pipe = pipeline(fake_server, cls)
    for _ in range(3):
        _, error = await run(pipe)
        assert error is None
    await asyncio.sleep(0.05)
    assert fake_server.open_connections == 1
    assert all(r.completed for r in fake_server.requests)
    await pipe.shutdown()


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert (
        parse_retry_after({"retry-after": email.utils.formatdate(now + 20, usegmt=True)}, now) == 20
    )
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
