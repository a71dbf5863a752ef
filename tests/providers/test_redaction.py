"""An API key of any shape never leaves the process, even when the upstream echoes it.

Pattern redaction knows ``sk-...`` and ``AIza...`` keys; an Azure key (32 hex
digits), a vLLM ``--api-key`` or a gateway's key has no such shape. The fake
server echoes the key the request carried (``echo_key``) in an in-stream error,
in a "200 with a JSON error" body and in a malformed line; every text a user or
a web client can see (the message, ``to_dict()``, ``raw``, ``body``, the result,
log records) must be free of it. Each test uses a fresh key, because providers
register their key process-wide (``errors.register_secret``).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import pytest

from pk_notebook import (
    LoggingMiddleware,
    Pipeline,
    ProtocolError,
    ProviderError,
    ProviderMiddleware,
    RetryPolicy,
)
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.runtime.errors import redact, register_secret, scrub
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import parse

PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}
HI = {
    "openai": b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
    "anthropic": (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"m"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    ),
    "gemini": b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}\n\n',
}


def azure_key() -> str:
    return secrets.token_hex(16)  # 32 hex digits, like an Azure OpenAI key


def vllm_key() -> str:
    return f"local-secret-{secrets.randbelow(10**6):06d}"


KEYS = [pytest.param(azure_key, id="azure-hex"), pytest.param(vllm_key, id="vllm-api-key")]


def assert_key_absent(key: str, error: BaseException, result: Any = None) -> None:
    seen = [str(error), repr(error), json.dumps(getattr(error, "to_dict", dict)())]
    seen += [str(getattr(error, name, "")) for name in ("raw", "body")]
    if result is not None:
        seen.append(json.dumps(result.to_dict(), default=str))
    for text in seen:
        assert key not in text, text


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


def scripts(dialect: str) -> dict[str, Script]:
    return {
        "in-stream-error": Script(
            "one two three",
            fault="stream_error",
            after=2,
            error_message="credentials {key} are not valid for this deployment",
            echo_key=True,
        ),
        "json-error-200": Script(
            fault="json_error",
            status=200,
            error_message="credentials {key} rejected",
            echo_key=True,
        ),
        "json-error-401": Script(
            fault="json_error",
            status=401,
            error_message="credentials {key} rejected",
            echo_key=True,
        ),
        "malformed-line": Script.recorded(
            HI[dialect] + b'data: {"echo": "{key}", "oops\n\n', echo_key=True
        ),
        "wrong-shape-line": Script.recorded(
            HI[dialect] + b'data: {"choices": "{key}", "candidates": "{key}", "type": 7}\n\n',
            echo_key=True,
        ),
    }


@pytest.mark.parametrize("make_key", KEYS)
@pytest.mark.parametrize(
    "case",
    ["in-stream-error", "json-error-200", "json-error-401", "malformed-line", "wrong-shape-line"],
)
@pytest.mark.parametrize("dialect", list(PROVIDERS))
async def test_echoed_key_never_leaves(
    server: FakeProviderServer,
    caplog: pytest.LogCaptureFixture,
    dialect: str,
    case: str,
    make_key: Any,
) -> None:
    key = make_key()
    server.enqueue(scripts(dialect)[case])
    provider = PROVIDERS[dialect]("m", base_url=server.base_url, api_key=key)
    pipe = Pipeline(
        LoggingMiddleware(logger_name="pk_notebook", level=logging.WARNING),
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)),
    )
    caplog.set_level(logging.DEBUG, logger="pk_notebook")
    error: BaseException | None = None
    result = None
    try:
        stream = await pipe.execute_stream("user", "hi")
        try:
            await stream.collect()
        except Exception as exc:
            error = exc
        result = stream.result
    except Exception as exc:
        error = exc
    finally:
        await pipe.shutdown()
    assert isinstance(error, (ProviderError, ProtocolError)), error
    request = server.requests[-1]
    assert key not in json.dumps(request.to_dict(), default=str)  # the server log hides it too
    assert_key_absent(key, error, result)
    if case in ("malformed-line", "wrong-shape-line"):
        assert isinstance(error, ProtocolError) and error.raw and "[REDACTED]" in error.raw
    else:
        assert "[REDACTED]" in str(error)
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in logging.Formatter().format(record)


@pytest.mark.parametrize("make_key", KEYS)
@pytest.mark.parametrize("dialect", list(PROVIDERS))
def test_parser_removes_its_key_from_raw_lines(dialect: str, make_key: Any) -> None:
    key = make_key()
    line = json.dumps({"choices": key, "candidates": key, "type": 7, "echo": key}).encode()
    outcome = parse(dialect, HI[dialect] + b"data: " + line + b"\n\n", api_key=key)
    assert isinstance(outcome.error, ProtocolError)
    assert outcome.error.partial_text == "Hi"
    assert_key_absent(key, outcome.error)


@pytest.mark.parametrize("dialect", list(PROVIDERS))
def test_in_stream_error_code_is_scrubbed_by_the_parser(dialect: str) -> None:
    key = "k" + secrets.token_hex(8)
    error = {"type": "error", "error": {"type": key, "code": key, "status": key, "message": key}}
    body = HI[dialect] + b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    outcome = parse(dialect, body, api_key=key)
    assert isinstance(outcome.error, ProviderError) and outcome.error.partial_text == "Hi"
    assert_key_absent(key, outcome.error)
    assert key not in str(outcome.error.code)


def test_in_stream_error_message_is_scrubbed_by_the_parser() -> None:
    key = azure_key()
    body = (
        HI["openai"] + b'data: {"error": {"message": "bad credentials ' + key.encode() + b'"}}\n\n'
    )
    outcome = parse("openai", body, api_key=key)
    assert isinstance(outcome.error, ProviderError) and outcome.error.partial_text == "Hi"
    assert_key_absent(key, outcome.error)


def test_registered_secret_is_redacted_everywhere() -> None:
    key = azure_key()
    assert redact(f"x {key} y") == f"x {key} y"  # no pattern knows this shape
    register_secret(key)
    assert redact(f"x {key} y") == "x [REDACTED] y"
    error = ProtocolError(f"echo {key}", raw=f"raw {key}")
    assert key not in str(error) and key not in str(error.raw)


def test_short_placeholder_keys_are_not_registered() -> None:
    register_secret("ollama")
    register_secret("EMPTY")
    assert redact("ollama returned EMPTY") == "ollama returned EMPTY"
    assert redact("ollama returned", "ollama") == "[REDACTED] returned"  # explicit still works


def test_scrub_cleans_an_error_built_elsewhere() -> None:
    key = "gateway_" + secrets.token_urlsafe(12)
    error = ProviderError("x")
    error.args = (f"upstream said {key}",)
    error.body = f"{{'echo': '{key}'}}"
    assert scrub(error, key) is error
    assert key not in str(error) and key not in str(error.body)


def test_log_records_lose_registered_keys(caplog: pytest.LogCaptureFixture) -> None:
    key = vllm_key() + "-gw"
    register_secret(key)
    caplog.set_level(logging.DEBUG, logger="pk_notebook")
    log = logging.getLogger("pk_notebook")
    log.warning("upstream said %s", key)
    try:
        raise RuntimeError(f"echo {key}")
    except RuntimeError:
        log.exception("failed")
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert key not in logging.Formatter().format(record)
    assert "[REDACTED]" in caplog.records[0].getMessage()
