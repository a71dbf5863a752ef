"""The part every HTTP streaming provider shares: one request, one SSE body, typed errors.

A provider subclass says how to build the request (:meth:`HTTPProvider.build`)
and supplies a *parser*: an object whose ``feed(bytes)`` returns the wire events
those bytes completed. Parsing a whole read at once (instead of one event per
call) keeps the per-chunk cost down, and a parser that meets an error stores it
in ``.error`` after returning the events before it, so no text that arrived is
lost. ``.done`` says the end marker arrived; ``end()`` is asked at a clean end of
the body and returns a :class:`Finish` only if the answer was complete.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Protocol

import httpx

from ..runtime.errors import ConfigurationError, StreamError, register_secret
from ..runtime.types import Finish, Message, ProviderConfig, ProviderEvent, Request, Usage
from . import _http
from .limits import DEFAULT_LIMITS, StreamLimits
from .pricing import Price, lookup_price

#: the kinds of attachment a provider may take (``accepts=``)
ATTACHMENT_KINDS = ("image", "pdf")


def size_text(n: int) -> str:
    """``5 MB``, ``41 kB``: a size as the errors state it."""
    if n >= 1024 * 1024:
        value = n / 1024 / 1024
        return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"
    return f"{n / 1024:.0f} kB" if n >= 1024 else f"{n} B"


class Parser(Protocol):
    started: bool
    done: bool
    error: StreamError | None

    def feed(self, chunk: bytes) -> list[ProviderEvent]: ...

    def end(self) -> Finish | None: ...


class HTTPProvider(abc.ABC):
    """Base class of the OpenAI-compatible, Anthropic and Gemini providers.

    Options common to all of them:
        model, temperature, top_p, max_tokens: request defaults (a call's config wins).
        api_key: the key; if not given, the first set variable of ``key_env``.
        base_url: the server; the key is required only for the official host.
        headers: extra headers sent with every request.
        timeout: an ``httpx.Timeout`` or seconds (connect/read/write/pool).
        max_connections: bound of this provider's pool (per event loop).
        transport: where connections come from: ``"aiohttp"`` (aiohttp's pool and
            C parser, the fastest under many concurrent streams), ``"httpx"``
            (httpx's own transport), or an ``httpx.AsyncBaseTransport`` such as
            ``httpx.MockTransport``. Default: ``$PK_NOTEBOOK_HTTP_TRANSPORT``, else
            ``"aiohttp"``. See ``pk_notebook.providers._http``.
        max_decompressed_bytes, max_compression_ratio: caps on a compressed
            response body once inflated (default 256 MiB and 500x); past either
            the stream ends in a ``ProtocolError`` keeping the partial text, so a
            small "zip bomb" cannot fill the memory. See ``_decode.BodyLimits``.
        limits: caps on one answer (:class:`~pk_notebook.providers.limits.StreamLimits`:
            SSE event size, answer characters, tool-call characters); defaults are
            generous for real answers.
        verify: TLS verification: True, False, or an ``ssl.SSLContext``.
        prices: a model -> :class:`Price` table (e.g. ``DEFAULT_PRICES``); with it,
            results carry ``cost``.
        name, key_env, require_key: for aliases (``"ollama"``, ``"groq"``): the name
            shown in results, the variables the key is read from, and whether a
            missing key is an error (default: only for the official host).
        accepts: the kinds of attachment the server takes, among ``"image"`` and
            ``"pdf"`` (``()``: text only). The default is each provider's (see its
            docstring); an attachment of another kind is refused before anything is
            sent, with a :class:`ConfigurationError` that says what to do.
    """

    #: registry name and the name shown in results
    name: str = "http"
    default_base_url: ClassVar[str] = ""
    official_hosts: ClassVar[frozenset[str]] = frozenset()
    key_env: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[ProviderConfig] = ProviderConfig()
    #: the attachment kinds taken when ``accepts`` is not given
    default_accepts: ClassVar[tuple[str, ...]] = ("image", "pdf")

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        max_connections: int = _http.DEFAULT_MAX_CONNECTIONS,
        prices: Mapping[str, Price] | None = None,
        name: str | None = None,
        key_env: tuple[str, ...] | None = None,
        require_key: bool | None = None,
        transport: _http.Transport | None = None,
        verify: bool | ssl.SSLContext = True,
        max_decompressed_bytes: int = _http.DEFAULT_MAX_BYTES,
        max_compression_ratio: float = _http.DEFAULT_MAX_RATIO,
        limits: StreamLimits | None = None,
        accepts: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if accepts is not None:
            if isinstance(accepts, str):
                accepts = (accepts,)
            unknown = set(accepts) - set(ATTACHMENT_KINDS)
            if unknown:
                raise ConfigurationError(
                    f"accepts takes {' and '.join(map(repr, ATTACHMENT_KINDS))}, "
                    f"got {sorted(unknown)}"
                )
            self.accepts: tuple[str, ...] | None = tuple(accepts)
        else:
            self.accepts = None  # the provider's default, decided once the URL is known
        base = (base_url or self.default_base_url).rstrip("/")
        try:
            url = httpx.URL(base)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"base_url {base_url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"base_url {base_url!r} must be an http(s) URL such as http://localhost:11434/v1"
            )
        self.base_url = base
        env = self.key_env if key_env is None else key_env
        self._key_env = env
        self._api_key = _http.resolve_key(
            self.name,
            api_key,
            env,
            # A cassette player (providers/cassette.py) sends nothing anywhere: no key needed.
            required=(url.host in self.official_hosts and not getattr(transport, "offline", False))
            if require_key is None
            else require_key,
        )
        # From here on every redact() in this process removes this exact key, whatever
        # its shape (an Azure hex key, a vLLM --api-key): errors built anywhere below.
        register_secret(self._api_key)
        if limits is not None and not isinstance(limits, StreamLimits):
            raise ConfigurationError("limits must be a StreamLimits, e.g. StreamLimits()")
        self.limits = limits or DEFAULT_LIMITS
        self.config = self.defaults.merged(
            ProviderConfig(
                model=model,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                system=system,
            )
        )
        self.model = self.config.model or ""
        self.extra_headers = dict(headers or {})
        self.prices = dict(prices) if prices else None
        if timeout is None:
            timeout = _http.DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout)
        self.body_limits = _http.BodyLimits(max_decompressed_bytes, max_compression_ratio)
        self._clients = _http.ClientsByLoop(
            _http.client_factory(
                _http.default_transport() if transport is None else transport,
                peer=_http.Peer(self.name, self._api_key),
                base_url=base,
                max_connections=max_connections,
                timeout=timeout,
                verify=verify,
            )
        )

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, "
            f"base_url={self.base_url!r}, api_key={key})"
        )

    @property
    def has_key(self) -> bool:
        return bool(self._api_key)

    # --- what subclasses provide ------------------------------------------------------

    @abc.abstractmethod
    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        """``(url, headers, body)`` of the HTTP request for ``request``."""

    @abc.abstractmethod
    def parser(self, config: ProviderConfig) -> Parser:
        """A fresh parser for one response (it keeps the state of that stream)."""

    def parser_for(self, request: Request, config: ProviderConfig) -> Parser:
        """The parser for ``request``'s response; override when it depends on the request
        (Anthropic's forced-tool structured answers)."""
        return self.parser(config)

    # --- the call -------------------------------------------------------------------

    async def stream(self, request: Request) -> AsyncIterator[ProviderEvent]:
        config = self.config.merged(request.config)
        if not config.model:
            raise ConfigurationError(
                f"{self.name} needs a model: use '{self.name}:MODEL' or pass model=..."
            )
        url, headers, body = self.build(request, config)
        parser = self.parser_for(request, config)
        secret = self._api_key
        client = await self._clients.get()
        # Every failure below is already one of the runtime's typed errors: the
        # client translated its library's exceptions where it called the library.
        async with client.stream(url, headers=headers, content=body) as response:
            read = _http.body_reader(self.name, response, self.body_limits)
            await _http.check_response(self.name, response, read, secret)
            closed = False
            try:
                feed = parser.feed
                while raw := await read():
                    events = feed(raw)
                    for event in events:
                        yield event
                    if parser.done or parser.error is not None:
                        break
                if parser.error is not None:
                    raise parser.error
                if not parser.done:
                    final = parser.end()
                    if final is not None:
                        yield final
            except GeneratorExit:
                # Closed by the consumer, or by asyncio.run() at its end, which closes
                # every suspended generator at once, this one possibly while its
                # consumer is closing it too: nothing here may wait (a second close
                # meeting a running one prints "already running"). An unread rest of
                # the body costs the connection's reuse, nothing else.
                closed = True
                raise
            finally:
                if parser.done and parser.error is None and not closed:
                    # The end marker arrived: read the (usually already buffered)
                    # rest so the connection goes back to the pool, briefly.
                    await _http.drain(read)

    async def aclose(self) -> None:
        await self._clients.aclose()

    # --- helpers for subclasses -----------------------------------------------------

    @property
    def accepted(self) -> tuple[str, ...]:
        """The attachment kinds this provider sends (``accepts``, or the class default)."""
        return self.accepts if self.accepts is not None else self.default_accepts

    def check_attachments(
        self,
        messages: tuple[Message, ...] | list[Message],
        *,
        image_cap: int | None = None,
        pdf_cap: int | None = None,
        image_types: tuple[str, ...] | None = None,
        hint: str = "",
    ) -> None:
        """Refuse, before anything is sent, an attachment this provider cannot take.

        Raises :class:`ConfigurationError` naming the file and what to do: a kind
        the server does not take (see ``accepts``), a type it does not read, or a
        file over the per-file cap.
        """
        for message in messages:
            for item in message.attachments:
                kind = "image" if item.is_image else "pdf"
                label = item.describe()
                if kind not in self.accepted:
                    raise ConfigurationError(self._refusal(kind, label, hint))
                if image_types is not None and item.is_image and item.mime_type not in image_types:
                    raise ConfigurationError(
                        f"{self.name} does not read {item.mime_type} images ({label}): "
                        f"convert it to {' or '.join(t.split('/')[1].upper() for t in image_types)}"
                        " first (e.g. PIL: image.save(buffer, format='PNG'))"
                    )
                cap = image_cap if item.is_image else pdf_cap
                if cap is not None and item.size > cap:
                    what = "images" if item.is_image else "PDFs"
                    advice = (
                        "downscale it or save it as JPEG (a figure: savefig(..., dpi=100))"
                        if item.is_image
                        else "split it or send only the pages that matter"
                    )
                    raise ConfigurationError(
                        f"{label} is too large for {self.name}, which takes {what} of at "
                        f"most {size_text(cap)} each: {advice}"
                    )

    def _refusal(self, kind: str, label: str, hint: str) -> str:
        taken = (
            " and ".join({"image": "images", "pdf": "PDFs"}[k] for k in self.accepted)
            or "text only"
        )
        if kind == "pdf":
            advice = (
                "extract its text (e.g. pypdf) and put it in the prompt, or use a provider "
                "that reads PDFs (openai on api.openai.com, anthropic, gemini)"
            )
        else:
            advice = "describe the image in words, or use a provider and model that see images"
        override = f"; if this server does take them, pass accepts={(*self.accepted, kind)!r}"
        what = "PDF files" if kind == "pdf" else "images"
        return (
            f"{self.name} ({self.base_url}) does not take {what} ({label}): it is set up "
            f"for {taken}{hint}. To send it, {advice}{override}"
        )

    def finish(
        self,
        reason: str | None,
        usage: Usage | None,
        tool_calls: tuple[Any, ...],
        model: str | None,
        *,
        reasoning_blocks: tuple[Mapping[str, Any], ...] = (),
    ) -> Finish:
        cost = None
        if self.prices is not None and usage is not None:
            price = lookup_price(self.prices, model or self.model)
            if price is not None:
                cost = price.cost(usage)
        return Finish(
            reason=reason,
            usage=usage,
            tool_calls=tool_calls,
            model=model,
            cost=cost,
            reasoning_blocks=reasoning_blocks,
        )
