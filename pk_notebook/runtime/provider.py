"""The one interface a provider implements.

A provider turns a :class:`~pk_notebook.runtime.types.Request` into an async
iterator of wire events: any number of :class:`Delta` and, if the answer ended
the way the provider meant it to, one :class:`Finish` last. An iterator that
stops without a ``Finish`` means the stream was cut short, and the pipeline
reports it as truncated.

The iterator must release its resources (close the HTTP response) when it is
closed or cancelled, so an async generator with ``async with`` inside is the
natural way to write one. Retries, timeouts, sessions and accounting are the
pipeline's job, not the provider's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from .types import ProviderEvent, Request


@runtime_checkable
class Provider(Protocol):
    """What :class:`~pk_notebook.runtime.middleware.ProviderMiddleware` calls."""

    #: short name used in results, logs and the registry (``"openai"``, ``"mock"``)
    name: str
    #: the model used when the request's config does not name one
    model: str

    def stream(self, request: Request) -> AsyncIterator[ProviderEvent]:
        """Start the call and yield its events as they arrive."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections. Called by ``Pipeline.shutdown``."""
        ...
