"""Record real provider calls once, replay them offline: reproducible notebooks.

::

    cassette = Cassette("notebooks/cassettes/trip.json")

    # once, online: every call is made for real and written to the cassette
    provider = create_provider("openai:gpt-4o-mini", transport=cassette.recorder())

    # from then on, offline and in CI: the same bytes, through the same parsers
    provider = create_provider("openai:gpt-4o-mini", transport=cassette.player())

In a notebook, ``%stream record PATH`` and ``%stream replay PATH`` do the same for
the cells that follow.

What a cassette holds, and why:

- Per call, the request's method, URL and JSON body (what replay matches on),
  and the response's status, content type and body *as the bytes arrived*, cut
  where the network cut them, each piece with its delay. Replaying serves those
  pieces to the real parser, so text, reasoning, tool calls, usage, finish
  reasons and even a faulty stream come back exactly; the delays give the
  original pacing (``pace=1.0``) or none (``pace=0``, the default, for tests).
- Never a request header (keys, ``authorization``, cookies, organisation ids)
  nor a response header but the content type. A key in a URL's query
  (``?key=...``, Gemini) is removed before the URL is stored or matched.
- Nothing volatile added by us: no recording date, no ids, keys sorted, one
  call per entry in the order made, delays rounded to milliseconds. Recording
  the same calls again replaces their entries in place, so a re-recorded
  cassette diffs only where the model answered differently.

Requests are matched by content: method, URL without the key, and the body as
parsed JSON (so key order and spacing do not matter). The same request made
twice is answered by its recordings in order. A request with no recording is a
:class:`ConfigurationError` naming the cassette and the request, never a silent
call to the network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from ..runtime.errors import ConfigurationError, redact

#: query parameters that carry keys (Gemini's ``key``); never stored, never matched
_SECRET_QUERY = frozenset({"key", "api_key", "api-key", "token", "access_token"})
VERSION = 1


class Cassette:
    """A file of recorded calls; :meth:`recorder` and :meth:`player` give transports."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Cassette({str(self.path)!r})"

    def recorder(self, transport: httpx.AsyncBaseTransport | None = None) -> RecordingTransport:
        """A transport that makes real calls (through ``transport``, default httpx's)
        and writes each one to the cassette."""
        return RecordingTransport(self, transport or httpx.AsyncHTTPTransport())

    def player(self, *, pace: float = 0.0) -> ReplayTransport:
        """A transport that answers from the cassette, offline. ``pace=1.0`` keeps the
        recorded timing, ``0`` sends everything at once."""
        return ReplayTransport(self, pace=pace)

    # --- the file ---------------------------------------------------------------------

    def load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the cassette {self.path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ConfigurationError(
                f"{self.path} is not a pk_notebook cassette (version {VERSION}); "
                "record it again with %stream record"
            )
        interactions = data.get("interactions")
        if not isinstance(interactions, list):
            raise ConfigurationError(f"the cassette {self.path} has no list of interactions")
        return interactions

    def save(self, interactions: list[dict[str, Any]]) -> None:
        text = json.dumps(
            {"version": VERSION, "interactions": interactions},
            indent=1,
            sort_keys=True,
            ensure_ascii=False,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole and renamed, so a kernel killed mid-write leaves the old file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cassette-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, self.path)


def request_record(request: httpx.Request, body: bytes) -> dict[str, Any]:
    """What is stored (and matched) of a request: method, URL without keys, JSON body."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = {"raw": body.decode("utf-8", "replace")}
    return {"method": request.method, "url": _clean_url(str(request.url)), "body": parsed}


def _key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def _clean_url(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in _SECRET_QUERY]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _piece(delay: float, data: bytes) -> list[Any]:
    try:
        return [round(delay, 3), data.decode("utf-8")]
    except UnicodeDecodeError:  # a piece cut inside a character: kept exact
        return [round(delay, 3), {"base64": base64.b64encode(data).decode("ascii")}]


def _bytes(piece: Any) -> bytes:
    data = piece[1]
    if isinstance(data, dict):
        return base64.b64decode(data["base64"])
    return str(data).encode("utf-8")


# --- recording ------------------------------------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Makes each call for real and stores it in the cassette once its body has been read."""

    def __init__(self, cassette: Cassette, inner: httpx.AsyncBaseTransport) -> None:
        self.cassette = cassette
        self._inner = inner
        self._interactions = cassette.load()
        self._replaced: set[int] = set()  # entries of an earlier recording re-recorded now

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        record = request_record(request, body)
        response = await self._inner.handle_async_request(request)
        entry: dict[str, Any] = {
            "request": record,
            "response": {
                "status": response.status_code,
                "content_type": response.headers.get("content-type", ""),
                "chunks": [],
            },
        }
        stream = _Recording(response.stream, entry, self._store)  # type: ignore[arg-type]
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=stream,
            extensions=response.extensions,
        )

    def _store(self, entry: dict[str, Any]) -> None:
        key = _key(entry["request"])
        for index, old in enumerate(self._interactions):
            if index not in self._replaced and _key(old["request"]) == key:
                self._interactions[index] = entry  # a re-recording keeps its place
                self._replaced.add(index)
                break
        else:
            self._replaced.add(len(self._interactions))
            self._interactions.append(entry)
        self.cassette.save(self._interactions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Recording(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, entry: dict[str, Any], store: Any) -> None:
        self._inner = inner
        self._entry = entry
        self._store = store
        self._stored = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        last = time.monotonic()
        chunks = self._entry["response"]["chunks"]
        async for data in self._inner:
            now = time.monotonic()
            chunks.append(_piece(now - last, data))
            last = now
            yield data

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            # What was read is what the model sent, even if the reader stopped early.
            if not self._stored:
                self._stored = True
                self._store(self._entry)


# --- replaying ------------------------------------------------------------------------


class ReplayTransport(httpx.AsyncBaseTransport):
    """Answers each request from the cassette; nothing goes to the network.

    ``offline`` tells the provider no key is needed: none is sent anywhere.
    """

    offline = True

    def __init__(self, cassette: Cassette, *, pace: float = 0.0) -> None:
        if pace < 0:
            raise ConfigurationError("pace must be >= 0 (1.0 is the recorded timing)")
        self.cassette = cassette
        self.pace = pace
        self._interactions: list[dict[str, Any]] | None = None
        self._used: set[int] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._interactions is None:
            self._interactions = self.cassette.load()
        body = await request.aread()
        record = request_record(request, body)
        key = _key(record)
        for index, entry in enumerate(self._interactions):
            if index not in self._used and _key(entry.get("request", {})) == key:
                self._used.add(index)
                response = entry.get("response") or {}
                return httpx.Response(
                    int(response.get("status", 200)),
                    headers={"content-type": str(response.get("content_type", ""))},
                    stream=_Replay(list(response.get("chunks") or []), self.pace),
                )
        recorded = len(self._interactions)
        raise ConfigurationError(
            f"the cassette {self.cassette.path} has no recorded answer for this request "
            f"({record['method']} {record['url']}; {recorded} recorded, "
            f"{len(self._used)} used). The prompt, history or options differ from the "
            "recording: record again with %stream record (or Cassette.recorder()). "
            f"The request: {redact(_key(record))[:300]}"
        )


class _Replay(httpx.AsyncByteStream):
    def __init__(self, chunks: list[Any], pace: float) -> None:
        self._chunks = chunks
        self._pace = pace

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._chunks:
            if self._pace and piece[0] > 0:
                await asyncio.sleep(piece[0] * self._pace)
            yield _bytes(piece)

    async def aclose(self) -> None:
        return None
