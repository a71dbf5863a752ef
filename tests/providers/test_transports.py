"""The ``transport`` option: which connections a provider uses, and what each choice
does that a user can see (proxies, a test transport, clean-up, error messages, exit)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import pk_notebook
from pk_notebook import (
    ConfigurationError,
    NetworkError,
    Pipeline,
    ProviderMiddleware,
    RetryPolicy,
)
from pk_notebook.providers import OpenAIProvider
from pk_notebook.providers._http import TRANSPORT_ENV, env_proxy
from pk_notebook.testing import FakeProviderServer, Script


def test_an_unknown_transport_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"'aiohttp'.*'httpx'"):
        OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", transport="curl")
    monkeypatch.setenv(TRANSPORT_ENV, "curl")
    with pytest.raises(ConfigurationError, match=TRANSPORT_ENV):
        OpenAIProvider("m", base_url="http://127.0.0.1:1/v1")


async def test_a_users_httpx_transport_is_used_as_given() -> None:
    """``httpx.MockTransport`` answers without any server: handy in a user's own tests."""
    seen: list[httpx.Request] = []
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"from "}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"mock"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    provider = OpenAIProvider(
        "m", base_url="http://api.test/v1", transport=httpx.MockTransport(answer)
    )
    async with Pipeline(ProviderMiddleware(provider)) as pipe:
        result = await pipe.execute("user", "hi")
    assert result.text == "from mock" and result.finish_reason == "stop"
    assert seen[0].url == "http://api.test/v1/chat/completions"


def test_env_proxy_follows_https_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert env_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://localhost:11434/v1") is None  # only https was set
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert env_proxy("https://api.openai.com/v1") is None


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_requests_go_through_the_proxy_the_environment_names(
    fake_server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """The fake server plays the proxy: a host that does not exist is reached through it."""
    for name in ("HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_server.url)
    fake_server.default = Script("through the proxy")
    provider = OpenAIProvider("m", base_url="http://model-host.invalid/v1", transport=transport)
    async with Pipeline(ProviderMiddleware(provider)) as pipe:
        result = await pipe.execute("user", "hi")
    assert result.text == "through the proxy"
    assert fake_server.requests[-1].headers["host"] == "model-host.invalid"


async def test_a_forgotten_pipeline_closes_its_connections_quietly(
    fake_server: FakeProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pipeline dropped without shutdown() (a re-run notebook cell) logs nothing and
    its kept-alive connection is closed."""
    pipe = Pipeline(
        ProviderMiddleware(OpenAIProvider("m", base_url=fake_server.base_url, transport="aiohttp"))
    )
    await pipe.execute("user", "hi")
    assert fake_server.open_connections == 1  # kept alive for the next call
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        del pipe
        gc.collect()
        deadline = time.monotonic() + 2
        # the count lives on the server's own thread and loop: poll it
        while fake_server.open_connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert fake_server.open_connections == 0
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_connection_dropped_before_the_answer_says_so(
    fake_server: FakeProviderServer, transport: str
) -> None:
    fake_server.default = Script("never sent", fault="drop", after=0)
    provider = OpenAIProvider("m", base_url=fake_server.base_url, transport=transport)
    async with Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1))) as pipe:
        with pytest.raises(NetworkError) as caught:
            await pipe.execute("user", "hi")
    message = str(caught.value)
    assert "Timeout" not in message  # nothing timed out: the server hung up
    assert "failed" in message and "Check the network or base_url" in message


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


@pytest.mark.parametrize(
    ("transport", "library"),
    [
        pytest.param("aiohttp", "aiohttp", id="aiohttp"),
        pytest.param("httpx", "httpx", id="httpx"),
    ],
)
async def test_an_error_is_translated_once_from_the_transports_own_library(
    fake_server: FakeProviderServer, transport: str, library: str
) -> None:
    """A dropped connection is a NetworkError raised straight from the library's exception:
    no second library's error in between (the aiohttp path used to pass through httpx's)."""
    fake_server.default = Script("one two three", fault="drop", after=1)
    provider = OpenAIProvider("m", base_url=fake_server.base_url, transport=transport)
    async with Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1))) as pipe:
        with pytest.raises(NetworkError) as caught:
            await pipe.execute("user", "hi")
    cause = caught.value.__cause__
    assert cause is not None and type(cause).__module__.split(".")[0] == library
    libraries = {type(e).__module__.split(".")[0] for e in _chain(cause)}
    assert libraries <= {library, "asyncio", "builtins", "h11", "httpcore", "anyio"}
    assert "in the middle of the stream" in str(caught.value)


async def test_a_users_transport_that_fails_is_a_network_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    provider = OpenAIProvider(
        "m", base_url="http://api.test/v1", transport=httpx.MockTransport(refuse)
    )
    async with Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1))) as pipe:
        with pytest.raises(NetworkError, match=r"before the answer started.*ConnectError"):
            await pipe.execute("user", "hi")


PACKAGE_ROOT = str(Path(pk_notebook.__file__).resolve().parent.parent)
EXIT_SCRIPT = """
import asyncio, sys
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import OpenAIProvider

base_url, how, transport = sys.argv[1:4]

def pipeline():
    provider = OpenAIProvider("m", base_url=base_url, transport=transport)
    return Pipeline(ProviderMiddleware(provider))

if how == "asyncio-run-global":  # still referenced when asyncio.run() closes the loop
    async def main():
        global pipe
        pipe = pipeline()
        results = await asyncio.gather(*(pipe.execute("user", "hi") for _ in range(5)))
        print(results[0].text)
    asyncio.run(main())
elif how == "asyncio-run-local":  # dropped when main() returns
    async def main():
        pipe = pipeline()
        print((await pipe.execute("user", "hi")).text)
    asyncio.run(main())
elif how == "sync":  # the facade's loop runs in a daemon thread until the very end
    pipe = pipeline()
    print(pipe.sync.execute("user", "hi").text)
elif how == "stream-left-open":  # a stream neither finished nor closed when the loop ends
    async def main():
        global pipe, stream
        pipe = pipeline()
        stream = await pipe.execute_stream("user", "hi")
        await stream.next()
        print(pipe and "Hello from the fake provider server.")
    asyncio.run(main())
elif how == "loop-never-closed":
    loop = asyncio.new_event_loop()
    pipe = pipeline()
    print(loop.run_until_complete(pipe.execute("user", "hi")).text)
"""


@pytest.mark.parametrize(
    ("how", "transport"),
    [
        *(
            (how, transport)
            for how in ("asyncio-run-global", "asyncio-run-local", "sync", "loop-never-closed")
            for transport in ("aiohttp", "httpx")
        ),
        # on httpx a response closes with an await, and asyncio.run() closes the
        # provider's generator while the pipeline closes it too: not quiet there
        ("stream-left-open", "aiohttp"),
    ],
)
def test_a_script_that_never_shuts_down_exits_quietly(
    fake_server: FakeProviderServer, tmp_path: Path, how: str, transport: str
) -> None:
    """No "Unclosed client session" / "Unclosed connector" (or anything else) on stderr,
    and the kept-alive connections are closed, not left to the operating system."""
    script = tmp_path / "forgetful.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), fake_server.base_url, how, transport],
        capture_output=True,
        text=True,
        timeout=60,
        # the pk_notebook under test, wherever this script is
        env={**os.environ, "PYTHONWARNINGS": "", "PYTHONPATH": PACKAGE_ROOT},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "Hello from the fake provider server."
    assert done.stderr == ""


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_read_timeout_is_a_retryable_network_error(
    fake_server: FakeProviderServer, transport: str
) -> None:
    """The provider's own ``timeout.read`` (silence on the socket) is a NetworkError naming the
    timeout, on both transports; the pipeline's idle timeout (a StreamTimeout) is another thing."""
    fake_server.default = Script("one two three", fault="stall", after=1)
    provider = OpenAIProvider(
        "m",
        base_url=fake_server.base_url,
        transport=transport,
        timeout=httpx.Timeout(5.0, read=0.3),
    )
    async with Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1))) as pipe:
        stream = await pipe.execute_stream("user", "hi")
        with pytest.raises(NetworkError, match=r"in the middle of the stream.*Timeout") as caught:
            async for _ in stream:
                pass
    assert caught.value.retryable and caught.value.partial_text == "one"
