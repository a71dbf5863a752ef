"""Compressed response bodies: decoded the same on every transport, and capped, so a small
"zip bomb" cannot make a provider inflate hundreds of megabytes (issue 14 point 4)."""

from __future__ import annotations

import functools
import gzip
import tracemalloc
import zlib
from typing import Any

import httpx
import pytest

from pk_notebook import Pipeline, ProtocolError, ProviderMiddleware, RetryPolicy, StreamStatus
from pk_notebook.providers import OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

pytestmark = pytest.mark.usefixtures("each_transport")

TEXT = "one two three four five"


def sse_body(text: str | list[str] = TEXT) -> bytes:
    opening, pieces, closing = Script(text).render("openai", "m")
    return b"".join([*opening, *pieces, *closing])


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@functools.cache
def gzip_bomb() -> bytes:
    """Two events of text, then 512 MiB of SSE comment lines, as ~0.5 MiB of gzip."""
    opening, pieces, _ = Script(TEXT).render("openai", "m")
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [packer.compress(b"".join([*opening, *pieces[:2]]))]
    line = b":" + b"x" * 65534 + b"\n"  # 64 KiB comment lines, far under the line cap
    block = line * 16  # 1 MiB
    out += [packer.compress(block) for _ in range(512)]
    out.append(packer.flush())
    return b"".join(out)


async def run(provider: OpenAIProvider) -> tuple[Any, BaseException | None]:
    """Read a call to the end; return (its result, the error it ended with)."""
    pipe = Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))
    stream = pipe.stream("hi")
    error = None
    try:
        async with stream:
            async for _ in stream:
                pass
    except Exception as exc:
        error = exc
    await pipe.shutdown()
    return stream.result, error


def gzip_members(data: bytes) -> bytes:
    """Two gzip members back to back, which is still one gzip body (RFC 1952)."""
    half = len(data) // 2
    return gzip.compress(data[:half]) + gzip.compress(data[half:])


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("gzip", gzip_members, id="gzip-two-members"),
        pytest.param("deflate", zlib.compress, id="deflate-zlib"),
        pytest.param("deflate", raw_deflate, id="deflate-raw"),
    ],
)
async def test_a_compressed_stream_reads_like_a_plain_one(
    fake_server: FakeProviderServer, encoding: str, compress: Any
) -> None:
    fake_server.default = Script.recorded(
        compress(sse_body()), headers={"content-encoding": encoding}
    )
    result, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert error is None and result.text == TEXT and result.status is StreamStatus.FINISHED
    assert fake_server.requests[-1].headers["accept-encoding"] == "gzip, deflate"


async def test_a_gzip_bomb_ends_in_a_protocol_error_without_inflating_it(
    fake_server: FakeProviderServer,
) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 600 * 1024  # 0.5 MiB on the wire for 512 MiB inflated
    fake_server.default = Script.recorded(bomb, headers={"content-encoding": "gzip"})
    provider = OpenAIProvider("m", base_url=fake_server.base_url)
    tracemalloc.start()
    try:
        result, error = await run(provider)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, ProtocolError), error
    assert "max_compression_ratio" in str(error)
    assert result.status is StreamStatus.FAILED and result.text == "one two"
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_the_absolute_cap_is_configurable(fake_server: FakeProviderServer) -> None:
    body = sse_body(["word "] * 2000)  # ~200 KiB of SSE, compresses ~40x
    fake_server.default = Script.recorded(gzip.compress(body), headers={"content-encoding": "gzip"})
    capped = OpenAIProvider("m", base_url=fake_server.base_url, max_decompressed_bytes=64 * 1024)
    result, error = await run(capped)
    assert isinstance(error, ProtocolError) and "max_decompressed_bytes" in str(error)
    assert result.text.startswith("word word ")  # what arrived before the cap is kept
    fine, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert error is None and fine.text == "word " * 2000


async def test_the_ratio_cap_is_configurable(fake_server: FakeProviderServer) -> None:
    body = sse_body(["word "] * 20_000)  # ~2 MiB, past the 1 MiB the ratio allows any ratio
    packed = gzip.compress(body)
    ratio = len(body) / len(packed)
    assert ratio > 20
    fake_server.default = Script.recorded(packed, headers={"content-encoding": "gzip"})
    strict = OpenAIProvider("m", base_url=fake_server.base_url, max_compression_ratio=ratio / 2)
    _, error = await run(strict)
    assert isinstance(error, ProtocolError) and "max_compression_ratio" in str(error)
    fine, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert error is None and len(fine.text) == 5 * 20_000


async def test_an_encoding_not_asked_for_is_a_protocol_error(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.default = Script.recorded(b"\x8b\x00\x80", headers={"content-encoding": "br"})
    _, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert isinstance(error, ProtocolError) and "'br'" in str(error)


async def test_a_corrupt_gzip_body_is_a_protocol_error(fake_server: FakeProviderServer) -> None:
    packed = bytearray(gzip.compress(sse_body()))
    packed[20:40] = b"\xff" * 20
    fake_server.default = Script.recorded(bytes(packed), headers={"content-encoding": "gzip"})
    _, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert isinstance(error, ProtocolError) and "could not be decoded" in str(error)


def test_limits_are_checked_when_the_provider_is_built() -> None:
    from pk_notebook import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_decompressed_bytes"):
        OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", max_decompressed_bytes=0)
    with pytest.raises(ConfigurationError, match="max_compression_ratio"):
        OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", max_compression_ratio=0.5)


async def test_a_users_mock_transport_may_answer_compressed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "gzip, deflate"
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
            content=gzip.compress(sse_body()),
        )

    provider = OpenAIProvider(
        "m", base_url="http://api.test/v1", transport=httpx.MockTransport(answer)
    )
    result, error = await run(provider)
    assert error is None and result.text == TEXT


@pytest.mark.parametrize(
    ("encoding", "compress", "message"),
    [
        pytest.param("gzip", gzip.compress, "slow down, please", id="gzip"),
        pytest.param("br", lambda body: b"\x8b\x00\x80", "HTTP 429", id="not-decodable"),
    ],
)
async def test_an_error_status_with_a_compressed_body_is_still_that_status(
    fake_server: FakeProviderServer, encoding: str, compress: Any, message: str
) -> None:
    from pk_notebook import RateLimitError

    error_body = b'{"error": {"message": "slow down, please", "type": "rate_limit_error"}}'
    fake_server.default = Script.recorded(
        compress(error_body),
        content_type="application/json",
        status=429,
        headers={"content-encoding": encoding, "retry-after": "3"},
    )
    _, error = await run(OpenAIProvider("m", base_url=fake_server.base_url))
    assert isinstance(error, RateLimitError) and error.retry_after == 3
    assert message in str(error)
