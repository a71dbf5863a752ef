"""Several models, one prompt, all streaming at once: :func:`compare`.

::

    from pk_notebook import compare

    async with compare({"mini": pipe_a, "haiku": pipe_b}, "Explain CRDTs") as cmp:
        async for event in cmp:                 # every model's chunks, as they arrive
            if event.chunk is not None:
                print(event.label, event.chunk.content)
    cmp.results["mini"].text, cmp.results["haiku"].usage

Each model runs as its own :class:`~pk_notebook.runtime.stream.Stream` in its
own task: a model that fails (or is stopped with ``cmp.stop("haiku")``) ends
only its own stream, with its own result (status ``failed`` / ``stopped``, the
partial text kept), and the others stream on. Iterating ends when every model
has ended; ``cmp.results`` then holds one :class:`~pk_notebook.runtime.types.Result`
per label. To read the models separately instead, iterate ``cmp.streams[label]``
yourself (then do not iterate ``cmp``). A model's thinking arrives in
``event.chunk.reasoning``, apart from its answer text (``event.chunk.content``),
and ends up in ``cmp.results[label].reasoning``.

Sessions (decision): a comparison is stateless unless ``session`` is given;
with ``session="trip"`` each model keeps its own history under
``"trip/<label>"`` (its own earlier answers, never another model's), so a
follow-up comparison on the same session continues each conversation.

``pipelines`` is a mapping of label to pipeline (or provider), or a sequence:
labels are then the provider's name and model (``mock:demo``), numbered when
two are the same. The runtime knows no provider names; build providers with
``pk_notebook.providers.create_provider``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, PkNotebookError
from .pipeline import Pipeline
from .stream import Stream
from .types import Chunk, Result

__all__ = ["CompareEvent", "Comparison", "compare"]

logger = logging.getLogger("pk_notebook")


@dataclass(frozen=True)
class CompareEvent:
    """One model's chunk, or (``chunk is None``) the end of its stream with its result."""

    label: str
    chunk: Chunk | None = None
    result: Result | None = None
    error: BaseException | None = None  # why the stream failed, if it did

    @property
    def ended(self) -> bool:
        return self.chunk is None


def _as_pipeline(value: Any) -> Pipeline:
    if isinstance(value, Pipeline):
        return value
    if isinstance(value, str):
        raise ConfigurationError(
            f"compare: {value!r} is a name, not a pipeline; build it first, e.g. "
            f"Pipeline(create_provider({value!r}))"
        )
    return Pipeline(value)  # a provider; Pipeline() says so if it is not one


def _label_of(pipeline: Pipeline) -> str:
    provider = pipeline.provider
    model = getattr(pipeline.provider_middleware, "config", None)
    model = getattr(model, "model", None) or getattr(provider, "model", None)
    name = getattr(provider, "name", type(provider).__name__)
    return f"{name}:{model}" if model else str(name)


def labelled(pipelines: Mapping[str, Any] | Sequence[Any]) -> dict[str, Pipeline]:
    """``{label: pipeline}`` from a mapping or a sequence (labels made unique)."""
    if isinstance(pipelines, Mapping):
        found = {str(label): _as_pipeline(value) for label, value in pipelines.items()}
    else:
        found = {}
        for value in pipelines:
            pipe = _as_pipeline(value)
            label = base = _label_of(pipe)
            n = 2
            while label in found:
                label, n = f"{base} ({n})", n + 1
            found[label] = pipe
    if len(found) < 1:
        raise ConfigurationError("compare needs at least one pipeline or provider")
    return found


class Comparison:
    """The streams of one comparison. Build it with :func:`compare`."""

    def __init__(
        self,
        pipelines: Mapping[str, Any] | Sequence[Any],
        prompt: str,
        *,
        session: str | None = None,
        configs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.pipelines = labelled(pipelines)
        self.prompt = prompt
        self.session = session
        self.streams: dict[str, Stream] = {}
        for label, pipe in self.pipelines.items():
            kwargs = dict(options)
            if configs and configs.get(label) is not None:
                kwargs["config"] = configs[label]
            # Stateless unless a session is named; then each model has its own history.
            kwargs["session"] = f"{session}/{label}" if session else None
            self.streams[label] = pipe.stream(prompt, **kwargs)
        self.results: dict[str, Result] = {}
        self.errors: dict[str, BaseException] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._iterated = False

    def __repr__(self) -> str:
        return f"<Comparison {list(self.streams)} ended={list(self.results)}>"

    @property
    def labels(self) -> list[str]:
        return list(self.streams)

    def stop(self, label: str | None = None) -> None:
        """Stop one model's answer (``label``) or all of them. Safe from any thread."""
        if label is not None:
            self.streams[label].stop()
            return
        for stream in self.streams.values():
            stream.stop()

    async def __aenter__(self) -> Comparison:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop whatever still runs and wait until every stream has ended."""
        for label, stream in self.streams.items():
            if label not in self.results:
                stream.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[CompareEvent]:
        if self._iterated:
            raise PkNotebookError("a comparison can be iterated once")
        self._iterated = True
        return self._events()

    async def _pump(self, label: str, queue: asyncio.Queue[CompareEvent]) -> None:
        stream = self.streams[label]
        error: BaseException | None = None
        try:
            async with stream:
                async for chunk in stream:
                    queue.put_nowait(CompareEvent(label, chunk))
        except asyncio.CancelledError:
            stream.stop()
        except PkNotebookError as exc:
            error = exc
        except Exception as exc:  # one model's bug must not end the others
            logger.exception("compare: %s failed", label)
            error = exc
        try:
            result = await stream.wait_closed()
        except PkNotebookError as exc:  # it never opened
            error = error or exc
            result = stream.result
        self.results[label] = result
        if error is not None:
            self.errors[label] = error
        queue.put_nowait(CompareEvent(label, None, result, error))

    async def _events(self) -> AsyncIterator[CompareEvent]:
        queue: asyncio.Queue[CompareEvent] = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._pump(label, queue), name=f"compare {label}")
            for label in self.streams
        ]
        running = len(self._tasks)
        try:
            while running:
                event = await queue.get()
                if event.ended:
                    running -= 1
                yield event
        finally:
            # The consumer stopped early or was cancelled: end every stream cleanly
            # (each keeps its partial text), then wait for their results.
            self.stop()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def collect(self) -> dict[str, Result]:
        """Run every model to its end; the results by label."""
        async for _ in self:
            pass
        return {label: self.results[label] for label in self.streams}


def compare(
    pipelines: Mapping[str, Any] | Sequence[Any],
    prompt: str,
    *,
    session: str | None = None,
    configs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Comparison:
    """The same prompt to several pipelines (or providers) at once, side by side.

    ``options`` go to every :meth:`Pipeline.stream` (``timeout``, ``config``,
    ``idle_timeout``, ...); ``configs`` gives a label its own
    :class:`~pk_notebook.runtime.types.ProviderConfig`. Nothing starts until the
    comparison is iterated (or :meth:`Comparison.collect` is awaited). See the
    module docstring for sessions and failures.
    """
    return Comparison(pipelines, prompt, session=session, configs=configs, **options)
