"""Record against a real HTTP server, replay offline: the same answer, nothing secret stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pk_notebook import (
    ConfigurationError,
    Pipeline,
    ProviderMiddleware,
    RetryPolicy,
    StreamStatus,
    TruncatedStream,
    Usage,
)
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.providers.cassette import Cassette
from pk_notebook.testing import FakeProviderServer, Script

# Assembled from a prefix so secret scanners do not take the fake key for a real one.
SK = "sk-"
KEY = SK + "cassette-secret-0123456789abcdef"
PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"{city}: light rain, 14 C"


def pipe_with(provider: Any) -> Pipeline:
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))


def summary(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "reasoning": result.reasoning,
        "calls": [(c.name, json.loads(c.arguments)) for c in result.tool_calls],
        "outputs": [r.output for r in result.tool_results],
        "usage": result.usage,
        "finish": result.finish_reason,
        "status": result.status,
    }


@pytest.mark.parametrize("dialect", list(PROVIDERS))
async def test_a_replayed_tool_turn_equals_the_recorded_one(
    fake_server: FakeProviderServer, dialect: str, tmp_path: Path
) -> None:
    cassette = Cassette(tmp_path / "run.json")
    fake_server.enqueue(
        Script(
            "",
            reasoning="Rain question: call the tool.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
            signature="c2lnbmF0dXJl",
        )
    )
    fake_server.enqueue(Script("Light rain in Paris: take the umbrella.", usage=(40, 9)))
    cls = PROVIDERS[dialect]
    recorder = cls(
        "fake-model", base_url=fake_server.base_url, api_key=KEY, transport=cassette.recorder()
    )
    async with pipe_with(recorder) as pipe:
        recorded = await pipe.execute("user", "Umbrella in Paris?", tools=[get_weather])
    assert len(fake_server.requests) == 2

    stored = cassette.path.read_text()
    assert KEY not in stored and "authorization" not in stored.lower()
    assert "x-api-key" not in stored and "x-goog-api-key" not in stored

    fake_server.reset()
    player = cls("fake-model", base_url=fake_server.base_url, transport=cassette.player())
    async with pipe_with(player) as pipe:
        replayed = await pipe.execute("user", "Umbrella in Paris?", tools=[get_weather])
    assert fake_server.requests == []  # nothing went to the network
    assert summary(replayed) == summary(recorded)
    assert replayed.text == "Light rain in Paris: take the umbrella."
    assert replayed.usage is not None and replayed.usage.estimated is None


async def test_an_unmatched_request_names_the_cassette(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    cassette = Cassette(tmp_path / "one.json")
    fake_server.enqueue(Script("Hello."))
    recorder = OpenAIProvider("m", base_url=fake_server.base_url, transport=cassette.recorder())
    async with pipe_with(recorder) as pipe:
        await pipe.execute("user", "hi")
    player = OpenAIProvider("m", base_url=fake_server.base_url, transport=cassette.player())
    async with pipe_with(player) as pipe:
        with pytest.raises(ConfigurationError, match=r"one\.json has no recorded answer"):
            await pipe.execute("user", "a different prompt")
        # the recorded one still plays, once; the same request again is not recorded twice
        assert (await pipe.execute("user", "hi")).text == "Hello."
        with pytest.raises(ConfigurationError, match="1 recorded, 1 used"):
            await pipe.execute("user", "hi")


async def test_recording_again_replaces_entries_in_place_and_the_file_is_stable(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    cassette = Cassette(tmp_path / "stable.json")
    fake_server.default = Script("Same answer.", usage=(5, 2))
    for _ in range(2):
        provider = OpenAIProvider("m", base_url=fake_server.base_url, transport=cassette.recorder())
        async with pipe_with(provider) as pipe:
            await pipe.execute("user", "first")
            await pipe.execute("user", "second")
    data = json.loads(cassette.path.read_text())
    assert [i["request"]["body"]["messages"][-1]["content"] for i in data["interactions"]] == [
        "first",
        "second",
    ]
    text = cassette.path.read_text()
    assert text == json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


async def test_gemini_key_in_the_url_is_never_stored(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    cassette = Cassette(tmp_path / "g.json")
    fake_server.enqueue(Script("ok"))
    provider = GeminiProvider(
        "fake-model", base_url=fake_server.base_url, api_key=KEY, transport=cassette.recorder()
    )
    async with pipe_with(provider) as pipe:
        result = await pipe.execute("user", "hi")
    assert result.text == "ok"
    assert KEY not in cassette.path.read_text()


async def test_a_cassette_keeps_a_faulty_stream_faulty(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    cassette = Cassette(tmp_path / "cut.json")
    fake_server.enqueue(Script("one two three four five", fault="truncate", after=2))
    recorder = OpenAIProvider("m", base_url=fake_server.base_url, transport=cassette.recorder())
    async with pipe_with(recorder) as pipe:
        first = pipe.stream("go")
        with pytest.raises(TruncatedStream):
            await first.collect()
    player = OpenAIProvider("m", base_url=fake_server.base_url, transport=cassette.player())
    async with pipe_with(player) as pipe:
        again = pipe.stream("go")
        with pytest.raises(TruncatedStream):
            await again.collect()
    assert again.result.status is first.result.status is StreamStatus.TRUNCATED
    assert again.result.text == first.result.text


def test_usage_survives_the_json_round_trip() -> None:
    assert Usage.from_dict(Usage(1, 2, estimated="chars/4").to_dict()) == Usage(
        1, 2, estimated="chars/4"
    )
