"""Answers that outlive their connection: run detached, read from a replay buffer.

An answer started on ``/stream`` runs in a task of its own (:class:`Answer`),
writing its SSE frames into this process's replay buffer and, with a Redis
session store, in batches into a Redis Stream (:mod:`pk_notebook.web.replay`). A
client connection only reads frames; it can go away and come back (to any
process, with Redis) and read on from the last id it saw.

While no client is attached the answer keeps generating for ``resume_grace``
seconds; then it is stopped and saved as interrupted (status ``"stopped"``). A
grace of 0 keeps the old rule: the last client leaving stops the answer at once.
An explicit stop (``POST /stream/{id}/stop``, from any process) stops it at once.

Frame ids are ``{answer_id}:{n}``, ``n`` counting the answer's events from 1 (the
``start`` event), so a browser's ``EventSource``, which sends the last id it saw as
``Last-Event-ID`` when it reconnects to the same URL, resumes the right answer.

An answer started with a resume ``token`` (``/ws`` gives one to each answer) is
followed only by a reader that gives the same token (:meth:`Answers.follow`);
without one, knowing the answer id is enough (``/stream``, ``/api/chat``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator
from typing import Any

from ..runtime.errors import PkNotebookError
from ..runtime.stream import Stream
from ..runtime.types import Chunk
from .replay import (
    MemoryReplay,
    RedisReplay,
    RedisWriter,
    expired_frames,
    forbidden_frames,
    same_token,
    token_hash,
    warn_often_at_most,
)
from .security import Slots, error_dict, log_unexpected
from .settings import WebSettings
from .streaming import dumps, result_dict, tool_payload

logger = logging.getLogger("pk_notebook")


def new_answer_id() -> str:
    return secrets.token_hex(12)


def parse_event_id(value: str | None) -> tuple[str | None, int | None]:
    """``"{answer_id}:{n}"`` -> (answer_id, n); ``"n"`` -> (None, n); else (None, None)."""
    if not value:
        return None, None
    answer_id, sep, seq = value.strip().rpartition(":")
    if not seq.isdigit() or len(seq) > 12:
        return None, None
    if sep and not (answer_id and len(answer_id) <= 64 and answer_id.isalnum()):
        return None, None
    return (answer_id or None), int(seq)


def check_answer_id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isalnum():
        return value
    return None


class Answer:
    """One answer running in this process (see the module docstring)."""

    def __init__(
        self,
        hub: Answers,
        answer_id: str,
        stream: Stream,
        holder: Any,
        encoder: Any = None,
        token: str | None = None,
    ) -> None:
        self.hub = hub
        #: None: the native ``/stream`` events; else an encoder of another protocol
        #: (:class:`~pk_notebook.web.ai_sdk.UIMessageEncoder`)
        self.encoder = encoder
        self.id = answer_id
        self.stream = stream
        self.holder = holder
        self.buffer = hub.local.create(answer_id)
        #: the hash of the resume token a reader must give (None: none needed)
        self.token = self.buffer.token = token_hash(token)
        self.writer: RedisWriter | None = hub.shared.writer(answer_id) if hub.shared else None
        self.seq = 0
        self.readers = 0
        self.prefix = f"id: {answer_id}:"
        #: set once the stream opened (result None) or failed to (the exception)
        self.opened: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.detached_at: float | None = None
        self.stop_reason: str | None = None
        self.task: asyncio.Task[None] | None = None

    # --- writing frames (the hot path) ---------------------------------------------

    def emit(self, event: str, data: str) -> None:
        self.seq = seq = self.seq + 1
        frame = f"{self.prefix}{seq}\nevent: {event}\ndata: {data}\n\n".encode()
        self.buffer.add(frame)
        if self.writer is not None:
            self.writer.add(seq, frame)

    def emit_done(self) -> None:
        self.seq = seq = self.seq + 1
        frame = f"{self.prefix}{seq}\ndata: [DONE]\n\n".encode()
        self.buffer.add(frame)
        if self.writer is not None:
            self.writer.add(seq, frame)

    def emit_data(self, data: str) -> None:
        """A ``data:`` line without an event name (the AI SDK's protocol)."""
        self.seq = seq = self.seq + 1
        frame = f"{self.prefix}{seq}\ndata: {data}\n\n".encode()
        self.buffer.add(frame)
        if self.writer is not None:
            self.writer.add(seq, frame)

    def emit_chunk(self, chunk: Chunk) -> None:
        if self.encoder is not None:
            for data in self.encoder.chunk(chunk):
                self.emit_data(data)
        elif chunk.tool is None and not chunk.reasoning:
            self.emit("chunk", dumps({"index": chunk.index, "content": chunk.content}))
        elif chunk.tool is not None:
            self.emit("tool", dumps(tool_payload(chunk.tool)))
        else:
            self.emit("reasoning", dumps({"index": chunk.index, "text": chunk.reasoning}))
            if chunk.content:
                self.emit("chunk", dumps({"index": chunk.index, "content": chunk.content}))

    # --- the answer's task -----------------------------------------------------------

    async def run(self) -> None:
        stream = self.stream
        try:
            try:
                await stream.open()
            except Exception as exc:
                log_unexpected(exc, "opening a stream")
                self.opened.set_result(exc)
                if self.encoder is not None:
                    for part in self.encoder.failed(exc):
                        self.emit_data(part)
                else:
                    self.emit("error", dumps({"error": error_dict(exc)}))
                self.emit_done()
                return
            self.opened.set_result(None)
            failure: BaseException | None = None
            try:
                async for chunk in stream:
                    if not chunk.final:
                        self.emit_chunk(chunk)
            except PkNotebookError:
                pass  # the stream ended with an error: it is on stream.result
            except Exception as exc:
                log_unexpected(exc, "streaming")
                failure = exc
            result = await stream.wait_closed()
            data = result_dict(result)
            if self.stop_reason is not None:
                data["stop_reason"] = self.stop_reason
            if self.encoder is not None:
                if failure is not None and data["error"] is None:
                    data["error"] = error_dict(failure)
                for part in self.encoder.end(result, data):
                    self.emit_data(part)
            else:  # as before answers were detached: the failure, the result's error, the result
                if failure is not None:
                    self.emit("error", dumps({"error": error_dict(failure)}))
                if data["error"] is not None:
                    self.emit("error", dumps({"error": data["error"]}))
                self.emit("result", dumps(data))
            self.emit_done()
        finally:
            if not self.opened.done():
                self.opened.set_result(None)
            await stream.aclose()
            self.hub.local.end(self.id)
            if self.writer is not None:
                await self.writer.close()
            self.hub.running.pop(self.id, None)
            await self.hub.slots.leave(self.holder)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stream.stop()

    # --- clients ---------------------------------------------------------------------

    def attach(self) -> None:
        self.readers += 1
        self.detached_at = None

    def detach(self) -> None:
        self.readers -= 1
        if self.readers > 0 or self.task is None or self.task.done():
            return
        if self.hub.settings.resume_grace <= 0:
            self.stop("disconnected")
        else:
            self.detached_at = asyncio.get_running_loop().time()

    def check_grace(self, now: float, seen: bool) -> None:
        """Stop the answer once no client was attached for the grace period (``seen``: a
        client follows it from another process)."""
        grace = self.hub.settings.resume_grace
        if grace <= 0 or self.readers > 0:
            return
        if seen:
            self.detached_at = None
        elif self.detached_at is None:
            self.detached_at = now
        elif now - self.detached_at >= grace:
            logger.info(
                "answer %s: no client for %g s; stopped (saved as interrupted)", self.id, grace
            )
            self.stop("no client attached during the grace period")


class Answers:
    """The answers of one app: the ones this process runs, and the shared store."""

    def __init__(
        self, settings: WebSettings, slots: Slots, shared: RedisReplay | None = None
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.shared = shared
        # With Redis the ended answers are kept there: this process keeps them briefly.
        ttl = settings.replay_ttl if shared is None else min(settings.replay_ttl, 5.0)
        self.local = MemoryReplay(settings.replay_max_events, ttl)
        self.running: dict[str, Answer] = {}
        self._ticker: asyncio.Task[None] | None = None
        #: chat id -> its latest answer (``/api/chat``'s resume)
        self.chats: dict[str, str] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    async def start(
        self,
        stream: Stream,
        holder: Any,
        *,
        encoder: Any = None,
        chat_id: str | None = None,
        token: str | None = None,
    ) -> Answer:
        """Run ``stream`` as a detached answer (the slot ``holder`` is released at its end).

        ``encoder``: another protocol's (the native events without); ``chat_id``: the
        chat whose latest answer this is, for :meth:`answer_of_chat`; ``token``: a
        secret every later reader must give (:meth:`follow`).
        """
        answer_id = new_answer_id()
        answer = Answer(self, answer_id, stream, holder, encoder, token)
        self.running[answer_id] = answer
        if chat_id is not None:
            self.chats.pop(chat_id, None)
            self.chats[chat_id] = answer_id
            while len(self.chats) > 4 * self.settings.max_concurrent + 64:
                del self.chats[next(iter(self.chats))]
        if self.shared is not None:
            # Not awaited before the answer starts: its first chunk does not wait on Redis.
            registering = asyncio.ensure_future(self._register(answer_id, chat_id, answer.token))
            self.tasks.add(registering)
            registering.add_done_callback(self.tasks.discard)
        if encoder is not None:
            for data in encoder.start(answer_id):
                answer.emit_data(data)
        else:
            answer.emit("start", dumps({"answer_id": answer_id}))
        answer.task = asyncio.ensure_future(answer.run())
        self.tasks.add(answer.task)
        answer.task.add_done_callback(self.tasks.discard)
        if self._ticker is None or self._ticker.done():
            if self.settings.resume_grace > 0 or self.shared is not None:
                self._ticker = asyncio.ensure_future(self._tick())
        return answer

    async def _tick(self) -> None:
        """While answers run: every tick, one Redis round trip for all of them (this
        process's liveness, and which detached ones a client follows from another
        process), then the grace period of each detached one."""
        grace = self.settings.resume_grace
        tick = max(0.05, min(0.5, grace / 4)) if grace > 0 else 0.5
        loop = asyncio.get_running_loop()
        while self.running:
            await asyncio.sleep(tick)
            answers = list(self.running.values())
            seen: set[str] = set()
            if self.shared is not None and answers:
                detached = [a.id for a in answers if a.readers == 0 and grace > 0]
                try:
                    seen = await self.shared.heartbeat(detached)
                except Exception as exc:
                    warn_often_at_most(
                        10, "renewing this process's liveness in Redis failed: %s", exc
                    )
            now = loop.time()
            for answer in answers:
                answer.check_grace(now, answer.id in seen)

    async def _register(self, answer_id: str, chat_id: str | None, token: str | None) -> None:
        assert self.shared is not None
        try:
            await self.shared.listen(self.stop_local, lambda: list(self.running))
            await self.shared.register(answer_id, chat_id, token)
        except Exception as exc:
            warn_often_at_most(10, "registering an answer in Redis failed: %s", exc)

    def stop_local(self, answer_id: str) -> bool:
        answer = self.running.get(answer_id)
        if answer is None:
            return False
        answer.stop("stop requested")
        return True

    async def stop(self, answer_id: str) -> str | None:
        """Stop an answer wherever it runs: its state before (running, done, or None)."""
        if self.stop_local(answer_id):
            return "running"
        if answer_id in self.local:
            return "done"
        if self.shared is not None:
            return await self.shared.request_stop(answer_id)
        return None

    async def follow(
        self, answer_id: str, after: int, *, attached: bool = False, token: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The frames of ``answer_id`` after ``after``: from this process if it runs (or
        ran) here, else from Redis; an error event if it cannot be resumed. The reader
        counts as attached to the answer until it stops iterating (``attached``: the
        caller attaches and detaches itself). ``token``: the answer's resume token, if
        it has one (else a ``resume_forbidden`` error event, checked before attaching)."""
        given = token_hash(token)
        if answer_id in self.local and not same_token(self.local.token_of(answer_id), given):
            yield forbidden_frames(answer_id)
            return
        answer = self.running.get(answer_id)
        if answer is not None and not attached:
            answer.attach()
            try:
                async for frames in self.local.follow(answer_id, after):
                    yield frames
            finally:
                answer.detach()
            return
        if answer_id in self.local or self.shared is None:
            async for frames in self.local.follow(answer_id, after):
                yield frames
            return
        try:
            async for frames in self.shared.follow(answer_id, after, token=given):
                yield frames
        except Exception as exc:
            logger.warning("reading an answer's replay buffer from Redis failed: %s", exc)
            yield expired_frames(answer_id)

    async def answer_of_chat(self, chat_id: str) -> str | None:
        """The latest answer of a chat, if its buffer is still kept (here or in Redis)."""
        answer_id = self.chats.get(chat_id)
        if answer_id is not None and answer_id in self.local:
            return answer_id
        if self.shared is not None:
            return await self.shared.chat_answer(chat_id)
        return None

    async def aclose(self) -> None:
        for answer in list(self.running.values()):
            answer.stop("server shutting down")
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self.shared is not None:
            await self.shared.aclose()
