"""Registers the providers that ship with pk_notebook."""

from __future__ import annotations

from typing import Any

from ..runtime.errors import ConfigurationError
from ..runtime.provider import Provider
from .mock import MockProvider
from .registry import register_provider


def _mock(model: str | None = None, **options: Any) -> Provider:
    # "mock" and "mock:demo" are the demo set; any other model name is just a label.
    provider = MockProvider.demo(**options)
    if model is not None:
        provider.model = model
    return provider


register_provider(
    "mock",
    _mock,
    description="offline, scripted demo answers (no key, no network)",
    default_model="demo",
)


# --- real APIs over httpx ----------------------------------------------------------------
# Keys are resolved when the provider is built: a missing key for an official host
# raises MissingAPIKey (naming the variable) from create_provider(); a local server
# (Ollama, vLLM, LM Studio) needs none.


#: the OpenAI APIs the ``openai`` provider speaks (``api=``)
OPENAI_APIS = ("chat", "responses")


def _openai(*, api: str = "chat", **options: Any) -> Provider:
    """``api="chat"`` (Chat Completions, the default) or ``"responses"`` (the Responses API)."""
    if api == "responses":
        from .responses import OpenAIResponsesProvider

        return OpenAIResponsesProvider(**options)
    if api != "chat":
        raise ConfigurationError(
            f"api must be {' or '.join(map(repr, OPENAI_APIS))} (Chat Completions or the "
            f"Responses API), got {api!r}"
        )
    from .openai import OpenAIProvider

    return OpenAIProvider(**options)


def _openai_responses(**options: Any) -> Provider:
    from .responses import OpenAIResponsesProvider

    options.setdefault("name", "openai-responses")
    return OpenAIResponsesProvider(**options)


def _anthropic(**options: Any) -> Provider:
    from .anthropic import AnthropicProvider

    return AnthropicProvider(**options)


def _gemini(**options: Any) -> Provider:
    from .gemini import GeminiProvider

    return GeminiProvider(**options)


def _compatible(
    name: str,
    base_url: str | None,
    key_env: tuple[str, ...] = (),
    default_model: str | None = None,
    include_usage: bool = True,
) -> Any:
    """A factory for an OpenAI-compatible server with its own defaults.

    ``include_usage=False`` for servers that refuse ``stream_options`` (Mistral
    answers 422); the pipeline estimates usage a server does not send, labelled.
    """

    def factory(**options: Any) -> Provider:
        from .openai import OpenAIProvider

        options.setdefault("name", name)
        options.setdefault("include_usage", include_usage)
        options.setdefault("key_env", key_env)
        if key_env:
            options.setdefault("require_key", True)
        if base_url is not None:
            options.setdefault("base_url", base_url)
        elif not options.get("base_url"):
            raise ConfigurationError(
                f"{name} needs base_url=..., e.g. create_provider('{name}:MODEL', "
                "base_url='http://localhost:8000/v1')"
            )
        if options.get("model") is None:
            if default_model is None:
                raise ConfigurationError(
                    f"{name} needs a model: use '{name}:MODEL' (the name the server serves)"
                )
            options["model"] = default_model
        return OpenAIProvider(**options)

    return factory


register_provider(
    "openai",
    _openai,
    description=(
        "OpenAI Chat Completions (any OpenAI-compatible server with base_url=...); "
        "api='responses' for the Responses API"
    ),
    key_env=("OPENAI_API_KEY",),
    default_model="gpt-4o-mini",
)
register_provider(
    "openai-responses",
    _openai_responses,
    description="OpenAI Responses API (/v1/responses; the same as openai with api='responses')",
    key_env=("OPENAI_API_KEY",),
    default_model="gpt-5-mini",
)
register_provider(
    "anthropic",
    _anthropic,
    description="Anthropic Messages API (Claude)",
    key_env=("ANTHROPIC_API_KEY",),
    default_model="claude-sonnet-4-5",
)
register_provider(
    "gemini",
    _gemini,
    description="Google Gemini (Generative Language API)",
    key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    default_model="gemini-2.5-flash",
)
register_provider(
    "openai-compatible",
    _compatible("openai-compatible", None),
    description="any OpenAI-compatible server: pass base_url=... (key optional: api_key=...)",
)
register_provider(
    "ollama",
    _compatible("ollama", "http://localhost:11434/v1", default_model="llama3.2"),
    description="a local Ollama server's /v1 endpoint (no key)",
    default_model="llama3.2",
)
register_provider(
    "vllm",
    _compatible("vllm", "http://localhost:8000/v1"),
    description="a vLLM server (default http://localhost:8000/v1; name the model)",
)
register_provider(
    "lmstudio",
    _compatible("lmstudio", "http://localhost:1234/v1"),
    description="LM Studio's local server (http://localhost:1234/v1; name the model)",
)
register_provider(
    "openrouter",
    _compatible("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",)),
    description="OpenRouter (OPENROUTER_API_KEY)",
    key_env=("OPENROUTER_API_KEY",),
)
register_provider(
    "mistral",
    # Mistral refuses stream_options (422) and sends usage in its last chunk anyway.
    _compatible(
        "mistral",
        "https://api.mistral.ai/v1",
        ("MISTRAL_API_KEY",),
        default_model="mistral-small-latest",
        include_usage=False,
    ),
    description="Mistral's API (MISTRAL_API_KEY; no stream_options: usage comes unasked)",
    key_env=("MISTRAL_API_KEY",),
    default_model="mistral-small-latest",
)
register_provider(
    "groq",
    _compatible("groq", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",)),
    description="Groq (GROQ_API_KEY)",
    key_env=("GROQ_API_KEY",),
)
