"""Build ``openai_4242.json`` from a real OpenAI recording (run from the repository root).

The response bytes are ``tests/conformance/openai_chat_include_usage.sse``: a real
``gpt-4o-2024-08-06`` Chat Completions stream with ``include_usage``, recorded by the
Mirascope project (see that file's ``.json`` and tests/conformance/README.md for its
provenance). They are served, one SSE event per piece, through
``Cassette.recorder()`` while the ``openai:gpt-4o`` provider asks the question of
notebook 09, so the cassette holds exactly the request that cell sends and the real
answer's bytes. The source has no timing, so every delay is 0.

    .venv/bin/python notebooks/cassettes/build_openai_4242.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import create_provider
from pk_notebook.providers.cassette import Cassette

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "conformance" / "openai_chat_include_usage.sse"
TARGET = Path(__file__).with_name("openai_4242.json")
PROMPT = "What is 4200 + 42?"


class Recorded(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for piece in self.pieces:
            yield piece


def serve(request: httpx.Request) -> httpx.Response:
    data = SOURCE.read_bytes()
    pieces = [event + b"\n\n" for event in data.split(b"\n\n") if event.strip()]
    return httpx.Response(
        200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=Recorded(pieces)
    )


async def main() -> None:
    if TARGET.exists():
        TARGET.unlink()
    transport = Cassette(TARGET).recorder(httpx.MockTransport(serve))
    provider = create_provider("openai:gpt-4o", transport=transport, api_key="sk-not-sent")
    pipe = Pipeline(ProviderMiddleware(provider))
    result = await pipe.execute("user", PROMPT)
    await pipe.shutdown()
    print(TARGET.relative_to(ROOT), repr(result.text), result.usage)


if __name__ == "__main__":
    asyncio.run(main())
