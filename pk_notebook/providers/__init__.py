"""Providers: the mock (offline default) and real APIs (OpenAI-compatible, Anthropic, Gemini).

Connections go through aiohttp by default, or httpx (``transport="httpx"`` or any
``httpx.AsyncBaseTransport``); see ``_http.py``.

``create_provider("mock")``, ``create_provider("openai:gpt-4o-mini")``; see
:func:`register_provider` to add your own.
"""

from ..runtime.provider import Provider
from .anthropic import AnthropicProvider
from .base import HTTPProvider
from .gemini import GeminiProvider
from .limits import StreamLimits
from .mock import Fault, MockCall, MockProvider, Scenario, split_tokens
from .openai import OpenAIProvider
from .pricing import DEFAULT_PRICES, PRICES_AS_OF, lookup_price
from .registry import available_providers, create_provider, parse_spec, register_provider
from .responses import OpenAIResponsesProvider
from .sse import ServerSentEvent, SSEDecoder

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "AnthropicProvider",
    "Fault",
    "GeminiProvider",
    "HTTPProvider",
    "MockCall",
    "MockProvider",
    "OpenAIProvider",
    "OpenAIResponsesProvider",
    "Provider",
    "SSEDecoder",
    "Scenario",
    "ServerSentEvent",
    "StreamLimits",
    "available_providers",
    "create_provider",
    "lookup_price",
    "parse_spec",
    "register_provider",
    "split_tokens",
]
