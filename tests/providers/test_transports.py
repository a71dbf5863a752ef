"""The ``transport`` option: which connections a provider uses, and what each choice
does that a user can see (proxies, a test transport, clean-up, error messages)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import httpx
import pytest

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
