"""Building providers by name, keys, defaults and pricing."""

from __future__ import annotations

import logging

import pytest

from pk_notebook import (
    ConfigurationError,
    MissingAPIKey,
    Pipeline,
    ProviderConfig,
    ProviderMiddleware,
    UsageMiddleware,
)
from pk_notebook.providers import (
    DEFAULT_PRICES,
    AnthropicProvider,
    GeminiProvider,
    OpenAIProvider,
    create_provider,
    lookup_price,
)
from pk_notebook.testing import FakeProviderServer, Script

# Fake keys are assembled from this prefix so secret scanners do not flag them as real.
SK = "sk-"

SECRET = SK + "test-0123456789abcdefghij"


@pytest.mark.parametrize(
    ("spec", "cls", "env", "model"),
    [
        pytest.param(
            "openai:gpt-4o-mini", OpenAIProvider, "OPENAI_API_KEY", "gpt-4o-mini", id="openai"
        ),
        pytest.param(
            "anthropic", AnthropicProvider, "ANTHROPIC_API_KEY", "claude-sonnet-4-5", id="anthropic"
        ),
        pytest.param("gemini", GeminiProvider, "GEMINI_API_KEY", "gemini-2.5-flash", id="gemini"),
    ],
)
def test_official_providers_need_a_key(
    spec: str, cls: type, env: str, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MissingAPIKey) as caught:
        create_provider(spec)
    assert env in str(caught.value)
    monkeypatch.setenv(env, SECRET)
    provider = create_provider(spec)
    assert isinstance(provider, cls)
    assert provider.model == model
    assert SECRET not in repr(provider)


def test_google_api_key_is_accepted_for_gemini(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza" + "x" * 30)
    assert create_provider("gemini").has_key


def test_local_servers_need_no_key() -> None:
    provider = create_provider("ollama:qwen2.5:0.5b")
    assert provider.base_url == "http://localhost:11434/v1"
    assert provider.model == "qwen2.5:0.5b" and provider.name == "ollama"
    assert create_provider("openai", base_url="http://localhost:8000/v1", model="m").model == "m"
    assert create_provider("vllm:meta-llama/Llama-3.3-70B-Instruct").base_url.endswith(":8000/v1")


def test_compatible_aliases_check_their_options() -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        create_provider("openai-compatible:m")
    with pytest.raises(ConfigurationError, match="model"):
        create_provider("vllm")
    with pytest.raises(MissingAPIKey, match="GROQ_API_KEY"):
        create_provider("groq:llama-3.1-8b-instant")
    with pytest.raises(ConfigurationError, match="base_url"):
        OpenAIProvider(base_url="ftp://example.com")


def test_defaults_and_call_config_merge() -> None:
    provider = OpenAIProvider("m", base_url="http://localhost:1/v1", temperature=0.3, max_tokens=50)
    assert provider.config == ProviderConfig(model="m", temperature=0.3, max_tokens=50)
    assert AnthropicProvider(base_url="http://localhost:1").config.max_tokens == 4096


async def test_key_is_sent_but_never_shown(
    fake_server: FakeProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_server.enqueue(Script(fault="json_error", status=401, error_message=f"bad key {SECRET}"))
    provider = OpenAIProvider("m", base_url=fake_server.base_url, api_key=SECRET)
    pipe = Pipeline(ProviderMiddleware(provider))
    with pytest.raises(Exception) as caught:
        await pipe.execute("user", "hi")
    await pipe.shutdown()
    assert type(caught.value).__name__ == "AuthenticationError"
    assert fake_server.requests[-1].headers["authorization"] == "Bearer [REDACTED]"
    shown = [
        str(caught.value),
        repr(caught.value),
        str(caught.value.to_dict()),
        repr(provider),
        caught.value.body or "",
        caplog.text,
    ]
    assert all(SECRET not in text for text in shown)


def test_price_lookup() -> None:
    assert lookup_price(DEFAULT_PRICES, "gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini*"]
    assert lookup_price(DEFAULT_PRICES, "gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o*"]
    assert lookup_price(DEFAULT_PRICES, "my-local-model") is None


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("provider", id="provider-prices"),
        pytest.param("middleware", id="usage-middleware"),
    ],
)
async def test_results_carry_cost(fake_server: FakeProviderServer, where: str) -> None:
    fake_server.default = Script("a b c", usage=(1_000_000, 2_000_000))
    options = {"prices": DEFAULT_PRICES} if where == "provider" else {}
    provider = OpenAIProvider("gpt-4o-mini", base_url=fake_server.base_url, **options)
    links = [UsageMiddleware(prices=DEFAULT_PRICES)] if where == "middleware" else []
    pipe = Pipeline(*links, ProviderMiddleware(provider))
    result = await pipe.execute("user", "hi")
    await pipe.shutdown()
    assert result.cost == pytest.approx(0.15 + 2 * 0.60)


def test_limits_are_a_typed_option_and_the_key_is_redacted_everywhere_at_once() -> None:
    from pk_notebook.providers import StreamLimits
    from pk_notebook.runtime.errors import redact

    key = "0123456789abcdef" * 2  # an Azure-style hex key: no known key shape
    provider = OpenAIProvider(
        "m", base_url="http://127.0.0.1:9/v1", api_key=key, limits=StreamLimits(max_answer_chars=10)
    )
    assert provider.limits.max_answer_chars == 10
    assert key not in redact(f"upstream said: bad key {key}")
    with pytest.raises(ConfigurationError, match="StreamLimits"):
        OpenAIProvider("m", base_url="http://127.0.0.1:9/v1", api_key=key, limits={"x": 1})  # type: ignore[arg-type]


async def test_presets_ask_for_the_usage_chunk_only_where_the_server_takes_it() -> None:
    """stream_options goes to servers that accept it; Mistral answers 422 to it (and sends
    usage unasked), so its preset leaves it out."""
    from pk_notebook import Pipeline
    from pk_notebook.testing import FakeProviderServer, Script

    with FakeProviderServer(default=Script("ok")) as server:
        for spec, asks in [("openai:m", True), ("ollama:m", True), ("mistral:m", False)]:
            provider = create_provider(spec, base_url=server.base_url, api_key="k")
            async with Pipeline(provider) as pipe:
                await pipe.execute("user", "hi")
            body = server.requests[-1].json
            assert ("stream_options" in body) is asks, spec
