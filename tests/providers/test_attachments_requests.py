"""attachments= over HTTP, per dialect: the content parts each provider sends (the
text first, then the files), and the files a provider refuses before anything is
sent (too large, a kind the server does not take), with an error that says what
to do."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pk_notebook import ConfigurationError, Pipeline, ProviderMiddleware, RetryPolicy, StreamStatus
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.runtime.attachments import Attachment
from pk_notebook.runtime.types import Message
from pk_notebook.testing import FakeProviderServer

PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n" + b"1 0 obj\n" * 8
FIGURE = Attachment(PNG, "image/png", "figure.png")
PAPER = Attachment(PDF, "application/pdf", "paper.pdf")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


@pytest.fixture(params=list(PROVIDERS))
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pipeline(server: FakeProviderServer, dialect: str, **options: Any) -> Pipeline:
    provider = PROVIDERS[dialect]("fake-model", base_url=server.base_url, **options)
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))


# --- the exact parts, per dialect -------------------------------------------------------


async def test_openai_parts(server: FakeProviderServer) -> None:
    async with pipeline(server, "openai", accepts=("image", "pdf")) as pipe:
        await pipe.execute("user", "What is in these?", attachments=[FIGURE, PAPER])
    message = server.requests[-1].json["messages"][-1]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
            {
                "type": "file",
                "file": {
                    "filename": "paper.pdf",
                    "file_data": f"data:application/pdf;base64,{b64(PDF)}",
                },
            },
        ],
    }


async def test_anthropic_blocks(server: FakeProviderServer) -> None:
    async with pipeline(server, "anthropic") as pipe:
        await pipe.execute("user", "What is in these?", attachments=[FIGURE, PAPER])
    message = server.requests[-1].json["messages"][-1]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)},
            },
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
            },
        ],
    }


async def test_gemini_inline_data(server: FakeProviderServer) -> None:
    async with pipeline(server, "gemini") as pipe:
        await pipe.execute("user", "What is in these?", attachments=[FIGURE, PAPER])
    content = server.requests[-1].json["contents"][-1]
    assert content == {
        "role": "user",
        "parts": [
            {"text": "What is in these?"},
            {"inlineData": {"mimeType": "image/png", "data": b64(PNG)}},
            {"inlineData": {"mimeType": "application/pdf", "data": b64(PDF)}},
        ],
    }


async def test_content_parts_read_the_same_in_every_dialect(
    server: FakeProviderServer, dialect: str
) -> None:
    options = {"accepts": ("image", "pdf")} if dialect == "openai" else {}
    async with pipeline(server, dialect, **options) as pipe:
        result = await pipe.execute("user", "Describe", attachments=[FIGURE, PAPER])
    assert result.status is StreamStatus.FINISHED
    parts = server.requests[-1].content_parts()
    assert [p["type"] for p in parts] == ["text", "image", "file"]
    assert parts[0]["text"] == "Describe"
    assert parts[1]["mime_type"] == "image/png" and parts[1]["data"] == PNG
    assert parts[2]["mime_type"] == "application/pdf" and parts[2]["data"] == PDF


async def test_history_attachments_go_as_parts_too(
    server: FakeProviderServer, dialect: str
) -> None:
    history = [
        Message("user", "Look at this", attachments=(FIGURE,)),
        Message("assistant", "A chart."),
    ]
    async with pipeline(server, dialect) as pipe:
        await pipe.execute("user", "And now?", history=history)
    assert b64(PNG) in server.requests[-1].body.decode()
    assert server.requests[-1].content_parts() == [{"type": "text", "text": "And now?"}]


async def test_plain_messages_stay_strings(server: FakeProviderServer) -> None:
    async with pipeline(server, "openai") as pipe:
        await pipe.execute("user", "hello")
    assert server.requests[-1].json["messages"] == [{"role": "user", "content": "hello"}]
    assert server.requests[-1].content_parts() == [{"type": "text", "text": "hello"}]


# --- refused before anything is sent ----------------------------------------------------


async def refused(server: FakeProviderServer, pipe: Pipeline, **options: Any) -> str:
    """The error message of a call that must fail before any request reaches the server.

    The stream ends FAILED with the error, which opening it raises (as any error
    before the first chunk is).
    """
    before = len(server.requests)
    async with pipe:
        stream = pipe.stream("Describe", **options)
        with pytest.raises(ConfigurationError) as caught:
            async with stream:
                pass
    result = stream.result
    assert result.status is StreamStatus.FAILED
    assert result.error is caught.value
    assert len(server.requests) == before  # the fake server saw no request
    return str(caught.value)


async def test_an_image_over_anthropics_5_mb_is_refused(server: FakeProviderServer) -> None:
    image = Attachment(PNG + b"\x00" * (5 * 1024 * 1024 + 1 - len(PNG)), "image/png", "huge.png")
    message = await refused(server, pipeline(server, "anthropic"), attachments=[image])
    assert message.startswith("huge.png (image/png, 5.0 MB) is too large for anthropic")
    assert "at most 5 MB each" in message and "downscale" in message


async def test_openai_takes_an_image_up_to_its_20_mb_cap(
    server: FakeProviderServer, each_transport: str
) -> None:
    """20 MB is also the runtime's own cap on any file, so OpenAI's is met, not passed;
    the 27 MB body goes through each transport (aiohttp gets it as a file object)."""
    image = Attachment(PNG + b"\x00" * (20 * 1024 * 1024 - len(PNG)), "image/png", "big.png")
    before = len(server.requests)
    async with pipeline(server, "openai") as pipe:
        result = await pipe.execute("user", "Describe", attachments=[image])
    assert result.status is StreamStatus.FINISHED
    assert len(server.requests) == before + 1
    assert server.requests[-1].content_parts()[1]["data"] == image.data


async def test_execute_raises_the_refusal(server: FakeProviderServer) -> None:
    image = Attachment(PNG + b"\x00" * (6 * 1024 * 1024), "image/png", "huge.png")
    before = len(server.requests)
    async with pipeline(server, "anthropic") as pipe:
        with pytest.raises(ConfigurationError, match="at most 5 MB each"):
            await pipe.execute("user", "Describe", attachments=[image])
    assert len(server.requests) == before


async def test_gemini_caps_the_inline_data_of_a_request(server: FakeProviderServer) -> None:
    big = Attachment(PNG + b"\x00" * (8 * 1024 * 1024), "image/png", "a.png")
    other = Attachment(PNG + b"\x00" * (8 * 1024 * 1024), "image/png", "b.png")
    message = await refused(server, pipeline(server, "gemini"), attachments=[big, other])
    assert "20 MB of inline data per request" in message and "base64" in message


async def test_gemini_refuses_gif_with_a_hint(server: FakeProviderServer) -> None:
    gif = Attachment(b"GIF89a" + b"\x00" * 16, "image/gif", "anim.gif")
    message = await refused(server, pipeline(server, "gemini"), attachments=[gif])
    assert "image/gif" in message and "PNG" in message


async def test_pdf_to_an_openai_compatible_server_is_refused(server: FakeProviderServer) -> None:
    message = await refused(server, pipeline(server, "openai"), attachments=[PAPER])
    assert "does not take PDF files (paper.pdf" in message
    assert "Ollama" in message
    assert "extract its text" in message
    assert "accepts=('image', 'pdf')" in message


async def test_images_to_an_openai_compatible_server_are_sent(server: FakeProviderServer) -> None:
    async with pipeline(server, "openai") as pipe:
        result = await pipe.execute("user", "Describe", attachments=[FIGURE])
    assert result.status is StreamStatus.FINISHED
    assert [p["type"] for p in server.requests[-1].content_parts()] == ["text", "image"]


def test_the_official_openai_host_takes_pdfs() -> None:
    official = OpenAIProvider("gpt-4o-mini", api_key="sk-test")
    local = OpenAIProvider("llama3.2", base_url="http://localhost:11434/v1")
    assert official.accepted == ("image", "pdf")
    assert local.accepted == ("image",)
    assert AnthropicProvider("m", api_key="k").accepted == ("image", "pdf")
    assert GeminiProvider("m", api_key="k").accepted == ("image", "pdf")


async def test_a_text_only_server_refuses_images(server: FakeProviderServer) -> None:
    message = await refused(server, pipeline(server, "openai", accepts=()), attachments=[FIGURE])
    assert "does not take images (figure.png" in message
    assert "text only" in message and "accepts=('image',)" in message


def test_accepts_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="accepts takes"):
        AnthropicProvider("m", api_key="k", accepts=("video",))
