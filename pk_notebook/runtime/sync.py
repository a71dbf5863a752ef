"""A blocking facade for scripts and for notebook cells that are not async.

Calls run on one background event loop in a daemon thread (a "portal"), and the
calling thread blocks on the answer. That works the same whether or not the
caller's thread already runs a loop (a Jupyter kernel does), so no
``nest_asyncio`` is needed, and it keeps working if a user applied it anyway.
Ctrl-C / Kernel > Interrupt while a call blocks cancels the call cleanly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UsageError
from .types import Chunk, Result, StreamStatus

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .stream import Stream

T = TypeVar("T")


class _Portal:
    _lock = threading.Lock()
    _instance: _Portal | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="pk_notebook-sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> _Portal:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise UsageError(
                "a sync pk_notebook call was made from inside another one; use the async API there"
            )
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Cancel the call, and wait until it has really ended (its stream closed,
            # its session turn saved) before letting the interrupt go on.
            future.cancel()
            finished.wait(timeout=10)
            raise


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, inside Jupyter or not."""
    return _Portal.get().call(coro)


_END = object()


async def _next_or_end(stream: Stream) -> Any:
    try:
        return await stream.next()
    except StopAsyncIteration:
        return _END


class SyncStream:
    """The blocking twin of :class:`~pk_notebook.runtime.stream.Stream`: ``for chunk in stream``."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while True:
                chunk = run_sync(_next_or_end(self._stream))
                if chunk is _END:
                    return
                yield chunk
        finally:
            if self._stream.opened and not self._stream.ended:
                self.close()

    def next(self) -> Chunk:
        chunk = run_sync(_next_or_end(self._stream))
        if chunk is _END:
            raise StopIteration
        return chunk

    def open(self) -> SyncStream:
        """Run the turn up to its first chunk (``with`` does this for you)."""
        run_sync(self._stream.open())
        return self

    def close(self) -> None:
        run_sync(self._stream.aclose())

    def stop(self) -> None:
        self._stream.stop()

    def collect(self) -> Result:
        return run_sync(self._stream.collect())

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def status(self) -> StreamStatus:
        return self._stream.status

    @property
    def result(self) -> Result:
        return self._stream.result

    def __enter__(self) -> SyncStream:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sync{self._stream!r}"[:-1] + ">"


class SyncPipeline:
    """``pipe.sync``: the pipeline's calls, blocking. Streams iterate with plain ``for``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline: Pipeline | None = pipeline

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise UsageError("this pipeline has been shut down; create a new Pipeline")
        return self._pipeline

    def _detach(self) -> None:
        self._pipeline = None

    def stream(self, content: str, **options: Any) -> SyncStream:
        """``with pipe.sync.stream("...", session="s") as s: for chunk in s: ...``"""
        return SyncStream(self.pipeline.stream(content, **options))

    def execute(self, role: str, content: str, **options: Any) -> Result:
        return run_sync(self.pipeline.execute(role, content, **options))

    def execute_with_context(
        self, session_id: str, role: str, content: str, **options: Any
    ) -> Result:
        return run_sync(self.pipeline.execute_with_context(session_id, role, content, **options))

    def execute_stream(self, role: str, content: str, **options: Any) -> SyncStream:
        return SyncStream(run_sync(self.pipeline.execute_stream(role, content, **options)))

    def execute_stream_with_context(
        self, session_id: str, role: str, content: str, **options: Any
    ) -> SyncStream:
        return SyncStream(
            run_sync(
                self.pipeline.execute_stream_with_context(session_id, role, content, **options)
            )
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine (e.g. a state-store call) on the facade's loop."""
        return run_sync(coro)

    def shutdown(self) -> None:
        if self._pipeline is not None:
            run_sync(self._pipeline.shutdown())
