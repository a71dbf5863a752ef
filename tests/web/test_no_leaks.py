"""Nothing secret or private reaches a web client: upstream keys, store paths and hosts.

Keys of shapes no pattern knows (an Azure-style 32-hex key, a vLLM
``--api-key``) are echoed back by the fake upstream in an in-stream error, a
"200 with a JSON error" body and a malformed line; every surface (``/stream``,
``/v1`` JSON and SSE, ``/ws``) must answer without them. A provider that leaves
its key in its own errors is covered by the web layer's exact-key redaction.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from pk_notebook.providers import MockProvider
from pk_notebook.providers.openai import OpenAIProvider
from pk_notebook.runtime.errors import ProtocolError, StoreUnavailable
from pk_notebook.runtime.memory import MemoryStore
from pk_notebook.runtime.types import Delta
from pk_notebook.sessions.spec import open_store
from pk_notebook.testing import FakeProviderServer, Script

from .conftest import make_pipeline


@pytest.fixture
def upstream() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


def azure_key() -> str:
    return secrets.token_hex(16)  # 32 hex digits, fresh: never registered by another test


def vllm_key() -> str:
    return "local-" + "secret-" + str(secrets.randbelow(10**6))  # like --api-key local-secret-123


FAULTS = {
    "in-stream-error": lambda: Script(
        text=["Hello ", "there"],
        fault="stream_error",
        after=1,
        error_message="invalid api key {key} for this deployment",
        echo_key=True,
    ),
    "200-json-error": lambda: Script(
        fault="json_error",
        status=200,
        error_message="the key {key} is not valid",
        echo_key=True,
    ),
    "malformed-line": lambda: Script.recorded(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi "}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"echo {key}\n\n',
        echo_key=True,
    ),
}


async def every_surface(live: Any) -> dict[str, str]:
    """One request on each surface; what each client received, as text."""
    out: dict[str, str] = {}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=live.url, timeout=15) as client:
        out["/stream"] = (await client.post("/stream", json={"prompt": "hi"})).text
        out["/v1 json"] = (await client.post("/v1/chat/completions", json=chat)).text
        out["/v1 sse"] = (
            await client.post("/v1/chat/completions", json={**chat, "stream": True})
        ).text
    received = []
    async with connect(live.ws_url) as ws:
        await ws.send("hi")
        while True:
            message = await ws.recv()
            received.append(str(message))
            data = json.loads(message)
            if data["type"] == "result" or (data["type"] == "error" and data["final"]):
                break
    out["/ws"] = "\n".join(received)
    return out


@pytest.mark.parametrize("make_key", [azure_key, vllm_key], ids=["azure-hex", "vllm"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_an_upstream_echoing_the_key_never_shows_it(
    serve: Any, upstream: FakeProviderServer, make_key: Any, fault: str
) -> None:
    key = make_key()
    header = "api-key" if make_key is azure_key else "authorization"
    provider = OpenAIProvider(
        "gpt-test", base_url=upstream.base_url, api_key=key, api_key_header=header
    )
    upstream.default = FAULTS[fault]()
    live = serve(make_pipeline(provider), heartbeat=None)
    outputs = await every_surface(live)
    for surface, text in outputs.items():
        assert '"error"' in text, (surface, text)  # the fault did reach the client
        assert key not in text, f"{surface} leaked the key after {fault}: {text}"
    assert len(upstream.requests) == 4


class CarelessProvider:
    """A provider whose own errors carry its key verbatim (a custom provider, a
    gateway wrapper): only the web layer's exact-key redaction stands in between."""

    name = "careless"

    def __init__(self, key: str) -> None:
        self._api_key = key

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        yield Delta("partial ")
        raise ProtocolError(
            f"the gateway refused {self._api_key}",
            raw='{"echo": "' + self._api_key + '"}',
        )

    async def aclose(self) -> None:
        pass


async def test_the_web_boundary_redacts_every_providers_exact_key(serve: Any) -> None:
    key = azure_key()
    live = serve(make_pipeline(CarelessProvider(key)), heartbeat=None)
    outputs = await every_surface(live)
    for surface, text in outputs.items():
        assert "ProtocolError" in text and "[REDACTED]" in text, (surface, text)
        assert key not in text, f"{surface} leaked the key: {text}"
    # The model's answer is passed as it is.
    assert "partial " in outputs["/stream"]


# --- store errors ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis-closed-port"])
async def test_store_errors_say_what_failed_without_paths_or_hosts(
    serve: Any, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if kind == "sqlite":
        spec, private = f"sqlite:{blocker}/sub/sessions.sqlite3", str(tmp_path)
    else:
        spec, private = "redis://127.0.0.1:1/0", "127.0.0.1:1"
    store = open_store(spec)
    live = serve(make_pipeline(MockProvider(), state_store=store))
    caplog.set_level("WARNING", logger="pk_notebook")
    async with httpx.AsyncClient(base_url=live.url, timeout=15) as client:
        response = await client.post("/stream", json={"prompt": "hi", "session": "s1"})
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "hi", "session": "s1"}))
        message = json.loads(await ws.recv())
    sse_error = response.json()["error"]
    ws_error = message["error"]
    assert response.status_code == 503
    for error in (sse_error, ws_error):
        assert error["type"] in ("StoreUnavailable", "SessionError")
        assert "session store" in error["message"]
        assert private not in error["message"] and os.sep + "tmp" not in error["message"]
        assert "127.0.0.1" not in error["message"] and "redis://" not in error["message"]
    assert message["type"] == "error" and message["final"] is True
    # The server log keeps the detail.
    assert any(private in record.getMessage() for record in caplog.records)


class FullDisk(MemoryStore):
    """A store that loads fine and fails to save, naming its file as stores do."""

    async def append(self, session_id: str, messages: Any) -> None:
        raise StoreUnavailable("cannot write /srv/private/sessions.sqlite3: disk full")


async def test_a_failed_save_is_reported_without_its_detail(serve: Any) -> None:
    live = serve(make_pipeline(MockProvider(), state_store=FullDisk()), heartbeat=None)
    async with httpx.AsyncClient(base_url=live.url, timeout=15) as client:
        response = await client.post("/stream", json={"prompt": "hi", "session": "s1"})
    result = json.loads(response.text.split("event: result\ndata: ", 1)[1].split("\n", 1)[0])
    assert result["status"] == "finished"
    assert result["warnings"] == ["the turn was not saved to the session store"]
    assert "/srv/private" not in response.text
