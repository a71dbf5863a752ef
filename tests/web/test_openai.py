"""/v1/chat/completions consumed by the official openai SDK (and raw httpx where needed)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from pk_notebook.providers import Fault, MockProvider
from pk_notebook.runtime import RetryPolicy

from .conftest import TRICKY, direct_text, make_pipeline, scenario_provider, slow_provider, wait_for


def client_for(live: Any, api_key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=live.url + "/v1", api_key=api_key, max_retries=0, timeout=10)


async def test_non_streaming_completion(serve: Any) -> None:
    live = serve(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    prompt = "Write a haiku about snow"
    expected = await direct_text(MockProvider.demo(chunk_delay=0, first_chunk_delay=0), prompt)
    async with client_for(live) as client:
        completion = await client.chat.completions.create(
            model="my-model", messages=[{"role": "user", "content": prompt}]
        )
        models = await client.models.list()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "my-model"
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert [m.id for m in models.data] == ["demo"]


async def test_streaming_completion_with_usage(serve: Any) -> None:
    live = serve(scenario_provider(TRICKY))
    async with client_for(live) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"m"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TRICKY
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_messages_become_history(serve: Any) -> None:
    # The scripted mock answers the n-th user turn with the n-th response.
    live = serve(
        MockProvider.scripted("first answer", "second answer", "third answer"),
        client_system="allow",  # refused by default: test_limits_and_logs covers that
    )
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]
    async with client_for(live) as client:
        completion = await client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "second answer"
    sent = live.provider.calls[-1].request.messages
    assert [(m.role, m.content) for m in sent] == [
        ("system", "be brief"),
        ("user", "q1"),
        ("assistant", "first answer"),
        ("user", "q2"),
    ]


async def test_max_tokens_gives_length(serve: Any) -> None:
    live = serve(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    async with client_for(live) as client:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Write a story"}], max_tokens=4
        )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


async def test_error_mid_stream_raises_in_the_sdk(serve: Any) -> None:
    live = serve(scenario_provider("one two three four", fault=Fault(kind="error", after=3)))
    async with client_for(live) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = ""
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
        await stream.close()
    assert text == "one two three"
    assert "failed mid-answer" in raised.value.message
    assert raised.value.body["pk_notebook"]["type"] == "ProviderError"  # type: ignore[index]
    assert raised.value.body["partial_text"] == "one two three"  # type: ignore[index]


async def test_errors_before_streaming_map_to_sdk_errors(serve: Any) -> None:
    live = serve(
        make_pipeline(
            MockProvider(fault=Fault(kind="rate_limit", times=9, retry_after=3)),
            retry=RetryPolicy(max_attempts=1),
        ),
        token="the-right-token",
    )
    async with client_for(live, "the-wrong-token") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
    async with client_for(live, "the-right-token") as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
        with pytest.raises(openai.UnprocessableEntityError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "assistant", "content": "no user message"}]
            )


async def test_streaming_disconnect_closes_the_provider(serve: Any) -> None:
    live = serve(slow_provider(), heartbeat=None)
    async with client_for(live) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        count = 0
        async for _ in stream:
            count += 1
            if count == 3:
                break
        await stream.close()
    assert wait_for(lambda: live.provider.calls[-1].ended is not None, 2.0)
    assert live.provider.calls[-1].outcome == "closed"


async def test_non_streaming_disconnect_closes_the_provider(serve: Any) -> None:
    live = serve(slow_provider())
    async with httpx.AsyncClient(base_url=live.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                timeout=0.3,
            )
    assert wait_for(lambda: live.provider.calls[-1].ended is not None, 2.0)
    assert live.provider.calls[-1].outcome == "closed"


async def test_raw_stream_shape(serve: Any) -> None:
    live = serve(scenario_provider("a\nb"))
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert payloads[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in p for p in payloads)  # only with stream_options.include_usage
