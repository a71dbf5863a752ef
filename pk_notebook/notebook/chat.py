"""The chat widget: a conversation in a notebook cell that streams, stops and remembers.

::

    from pk_notebook import Chat
    chat = Chat(pipe, session_id="support-demo", title="Ask the docs")
    chat                                   # renders in the cell
    result = await chat.send("Hello")      # the same turn, from code

    Chat(pipe, tools=[get_weather], approve=True)   # tools, with Run / Deny before each call
    Chat(pipe, schema=Trip)                # answers as data: the object fills in live
    chat.attach(fig)                       # goes with the next message (or the Attach button)

Why it is built this way:

- A Send click or an Enter is a widget message, handled while the kernel is
  idle or awaiting, possibly on a subshell's thread. Handlers therefore only
  schedule the turn onto the kernel's event loop (captured when the chat is
  created) with ``call_soon_threadsafe`` and return; the reply streams in a
  task, so Stop and other cells stay responsive. A turn's stream is built
  before anything else happens, and Stop goes through ``Stream.stop()``
  (thread-safe, valid in every phase). Nothing here needs nest_asyncio.
- The transcript is the session in the pipeline's store, which ``%%stream``
  cells share (``Chat()`` without a pipeline uses the notebook's
  :func:`~pk_notebook.notebook.defaults.default_pipeline`). Before each turn,
  after it, and on Refresh the widget reads the store and appends what it has
  not shown yet; entries that exist only on screen (an error, a turn that was
  never saved) stay where they are.
- A streaming reply is re-rendered through :class:`~pk_notebook.runtime.text.Throttle`
  at most 20 times a second, and the final text is always set whole at the end.
- Markdown is converted in Python (:mod:`pk_notebook.notebook.markdown`) into an
  ``HTML`` widget: one message per refresh, no async re-render in the browser,
  so the reply grows without flicker, and untrusted HTML in answers is escaped.
- Reasoning and tool calls show in the assistant's bubble, above its answer, as
  the cell shows them (:mod:`pk_notebook.notebook.parts_view`): a collapsible
  "Thinking" section, one card per call, and text the model wrote before a call
  above that call's card, in its own paragraph (one turn, the same live, saved
  and reopened). ``approve=True`` asks before each call with Run / Deny buttons
  in the transcript (``chat.approve`` can be switched at any time); a function
  instead decides by itself.
- ``schema=`` asks every reply for data of that shape: the reply shows the object
  filling in (:mod:`pk_notebook.notebook.partial_view`), then the validated one.
- Files go with the next message: ``chat.attach(fig)`` (figures, images, paths
  to images and PDFs) or the Attach button (a ``FileUpload``); they show as
  thumbnails above the message box, then in the user's bubble. The session keeps
  them as :mod:`pk_notebook.runtime.attachments` decides (small ones with the
  message, a note in place of large ones).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets
from IPython.core.error import UsageError as IPythonUsageError

from ..runtime.attachments import Attachment, as_attachment
from ..runtime.errors import ConfigurationError, PkNotebookError, UsageError
from ..runtime.pipeline import Pipeline
from ..runtime.schema import OutputSchema, output_schema
from ..runtime.store import check_session_id
from ..runtime.stream import Stream
from ..runtime.text import Throttle
from ..runtime.tools import Approver, ToolSpec, as_tools
from ..runtime.types import Message, ProviderConfig, Result, StreamStatus, ToolCall, Usage
from . import chat_view as view
from .chat_input import MessageBox
from .options import usage_error
from .partial_view import final_object_bundle, object_markdown, schema_fields
from .parts_view import TurnParts, group_turns, split_answer
from .status import format_status

logger = logging.getLogger("pk_notebook")

ReplyCallback = Callable[[Result], Any]


@dataclass
class _Entry:
    """One thing in the transcript. ``synced`` entries mirror a message of the store."""

    kind: str  # "user" | "assistant" | "notice"
    widget: widgets.Widget
    message: Message | None = None
    synced: bool = False


class Chat(widgets.VBox):
    """A chat UI on a pipeline's session: transcript, message box, Send/Stop, New chat.

    Parameters:
        pipeline: the :class:`~pk_notebook.runtime.pipeline.Pipeline` to call; the
            notebook's default pipeline (shared with ``%%stream``) if not given.
        session_id: the session to read and continue; a fresh ``chat-xxxxxx`` if not given.
        title: shown in the header.
        config: per-call :class:`~pk_notebook.runtime.types.ProviderConfig` overrides.
        height: the transcript's fixed height (CSS), so nothing jumps while streaming.
        tools: Python functions the model may call (as ``pipe.stream(tools=...)``).
        approve: ``True`` asks before each tool call with Run / Deny buttons in the
            transcript; a function ``approve(call) -> bool`` (or awaitable) decides
            by itself; ``None`` or ``False`` runs every call. ``chat.approve`` can be
            switched at any time (the approval mode toggle).
        max_tool_rounds: at most this many rounds of tool calls per reply.
        schema: a pydantic model, dataclass, TypedDict or JSON-schema dict: every
            reply is data of that shape, shown filling in; ``result.parsed`` is the
            validated object.
        context: substitute ``{name}``, ``{In[3]}``, ``{Out[3]}``, ``{Err}`` in messages
            as ``%%stream`` does (a DataFrame as a table, a figure attached); on by
            default in a notebook, ``False`` sends messages exactly as typed.
    """

    title = traitlets.Unicode("Chat", help="The heading shown above the transcript.")
    session_id = traitlets.Unicode(
        help="The session this chat shows and continues; assign another id to switch sessions."
    )
    streaming = traitlets.Bool(
        False, read_only=True, help="True while a reply is streaming (Stop is enabled)."
    )
    update_interval = traitlets.Float(
        0.05,
        help="Seconds between two front-end refreshes of a streaming reply (20/s at most).",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Chat:
        # No pipeline given: the notebook's must be buildable (e.g. its provider's key
        # set), said in one line. Checked before the widget exists, because a widget
        # whose __init__ fails is still closed by its __del__, on a half-built chat.
        if (args[0] if args else kwargs.get("pipeline")) is None:
            from .defaults import default_pipeline

            try:
                default_pipeline()
            except ConfigurationError as exc:
                raise usage_error(exc) from None
        # Tools are checked here too, for the same reason (a half-built chat's __del__).
        try:
            tools = as_tools(kwargs.get("tools"))
        except ConfigurationError as exc:
            raise usage_error(exc) from None
        approve = kwargs.get("approve")
        if approve is not None and not isinstance(approve, bool) and not callable(approve):
            raise IPythonUsageError(
                "approve= takes True (Run / Deny buttons), a function deciding, or None"
            )
        schema = kwargs.get("schema")
        try:
            checked_schema = output_schema(schema) if schema is not None else None
        except ConfigurationError as exc:
            raise usage_error(exc) from None
        chat = super().__new__(cls, *args, **kwargs)
        chat._checked_tools = tools
        chat._checked_schema = checked_schema
        return chat

    def __init__(
        self,
        pipeline: Pipeline | None = None,
        *,
        session_id: str | None = None,
        title: str = "Chat",
        config: ProviderConfig | None = None,
        height: str = "420px",
        tools: Any = None,
        approve: bool | Approver | None = None,
        max_tool_rounds: int | None = None,
        schema: Any = None,
        context: bool = True,
        **kwargs: Any,
    ) -> None:
        if pipeline is not None and not isinstance(pipeline, Pipeline):
            raise UsageError(
                f"Chat needs a Pipeline, got {type(pipeline).__name__}; e.g. "
                "Chat(Pipeline(ProviderMiddleware(MockProvider.demo())))"
            )
        session_id = check_session_id(session_id or f"chat-{secrets.token_hex(3)}")
        self.tools: tuple[ToolSpec, ...] = getattr(self, "_checked_tools", None) or as_tools(tools)
        super().__init__(title=title, session_id=session_id, **kwargs)
        self._pipeline = pipeline
        self.config = config
        self.approve = approve
        self.max_tool_rounds = max_tool_rounds
        self.schema: OutputSchema | None = getattr(self, "_checked_schema", None) or (
            output_schema(schema) if schema is not None else None
        )
        self._pending: list[Attachment] = []  # files for the next message
        self.context = context
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # captured by the first awaited call instead

        self._entries: list[_Entry] = []
        self._synced: list[Message] = []
        self._results: list[Result] = []
        self._reply_callbacks: list[ReplyCallback] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lock = asyncio.Lock()
        self._turns: list[Stream] = []  # this chat's turns not yet ended, oldest first
        self._saved: list[Any] = []  # display handles of the transcript's saved copies
        self._last_failed: str | None = None
        self._last_status = ""
        # The reply streaming now: its parts, and how to re-render it (for Run / Deny).
        self._showing: tuple[TurnParts, Callable[[], None]] | None = None

        self._build(height)
        self.observe(self._on_title, names="title")
        self.observe(self._on_session, names="session_id")
        if self._loop is not None:
            self._spawn(self._locked_sync())

    # --- layout ---------------------------------------------------------------------

    def _build(self, height: str) -> None:
        w = widgets
        style = w.HTML(view.stylesheet())
        style.add_class("pk-chat-style")
        self._heading = w.HTML(view.header_html(self.title, self.session_id))
        self._heading.add_class("pk-chat-heading")
        self._refresh_button = self._tool("Refresh", "Show messages added to the session elsewhere")
        self._new_button = self._tool("New chat", "Start a new session; the old one stays stored")
        self._refresh_button.on_click(lambda _b: self._schedule(self._locked_sync))
        self._new_button.on_click(lambda _b: self._schedule(self.new_chat))
        header = w.HBox([self._heading, self._refresh_button, self._new_button])
        header.add_class("pk-chat-header")

        self._empty = w.HTML(view.empty_html(), layout=w.Layout(margin="auto 0"))
        self._messages = w.VBox([self._empty], layout=w.Layout(min_height="100%", flex="0 0 auto"))
        self._messages.add_class("pk-chat-messages")
        # column-reverse: the scroll position is anchored at the bottom, so the newest
        # message stays in view as it grows, with no JavaScript.
        self._transcript = w.Box(
            [self._messages],
            layout=w.Layout(
                height=height, overflow="auto", display="flex", flex_flow="column-reverse"
            ),
        )
        self._transcript.add_class("pk-chat-transcript")

        self._box = MessageBox(lambda text: self._schedule(lambda: self._turn(text)))
        self.input = self._box.box  # the textarea: chat.input.value is the draft
        self._send_button = w.Button(
            description="Send", button_style="primary", tooltip="Send the message"
        )
        self._send_button.add_class("pk-chat-send")
        self._stop_button = w.Button(
            description="Stop", disabled=True, tooltip="Stop the reply; the text so far is kept"
        )
        for button in (self._send_button, self._stop_button):
            button.add_class("pk-chat-action")
        self._stop_button.add_class("pk-chat-stop")
        self._send_button.on_click(self._on_send_click)
        self._stop_button.on_click(lambda _b: self.stop())
        self._upload = w.FileUpload(
            accept="image/*,.pdf",
            multiple=True,
            description="Attach",
            tooltip="Attach images or PDFs to your next message",
            layout=w.Layout(width="auto"),
        )
        self._upload.add_class("pk-chat-attach")
        self._upload.observe(self._on_upload, names="value")
        self._attached = w.HTML("")
        self._attached.add_class("pk-chat-attached")
        composer = w.HBox([self.input, self._upload, self._send_button, self._stop_button])
        composer.add_class("pk-chat-composer")

        self._footer = w.HTML(view.footer_html(self._summary()))
        self._footer.add_class("pk-chat-footer")
        self.add_class(f"pk-chat-{self.model_id}")  # what the saved copy's CSS looks for
        self.children = (
            style,
            header,
            self._transcript,
            self._attached,
            composer,
            self._box.hint,
            self._box.hidden,
            self._footer,
        )
        self.add_class("pk-chat")

    @staticmethod
    def _tool(label: str, tooltip: str) -> widgets.Button:
        button = widgets.Button(
            description=label, tooltip=tooltip, layout=widgets.Layout(width="auto")
        )
        button.add_class("pk-chat-tool")
        return button

    def _ipython_display_(self) -> None:
        """Show the live chat, and under it a saved copy of the transcript.

        A notebook reopened without a kernel, its nbconvert export and GitHub
        cannot draw the widget; they show the copy, which is updated after every
        finished turn (a CSS rule hides it while the live widget is on the page).
        """
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self._saved.append(display(self._saved_bundle(), raw=True, display_id=True))

    def _saved_bundle(self) -> dict[str, str]:
        live_class = f"pk-chat-{self.model_id}"
        return {
            "text/html": view.saved_transcript_html(
                self._synced,
                title=self.title,
                session_id=self.session_id,
                live_class=live_class,
                answer=self._stored_answer,
            ),
            "text/plain": self._export_markdown(),
        }

    def _update_saved(self) -> None:
        if not self._saved:
            return
        bundle = self._saved_bundle()
        for handle in self._saved:
            try:
                handle.update(bundle, raw=True)
            except Exception:
                logger.debug("could not update the saved transcript", exc_info=True)

    def __repr__(self) -> str:
        return (
            f"<Chat {self.title!r} session={self.session_id!r} messages={len(self._synced)} "
            f"streaming={self.streaming} model={self.model!r}>"
        )

    # --- what code reads --------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline replies come from: the one given, else the notebook's current default
        (looked up at each turn, so ``%stream config`` changes apply to the chat too)."""
        if self._pipeline is not None:
            return self._pipeline
        from .defaults import default_pipeline

        return default_pipeline()

    @property
    def history(self) -> list[Message]:
        """The session's messages as last read from the store (oldest first)."""
        return list(self._synced)

    @property
    def results(self) -> list[Result]:
        """The results of the replies streamed in this widget, oldest first."""
        return list(self._results)

    @property
    def model(self) -> str | None:
        for result in reversed(self._results):
            if result.model:
                return result.model
        config = self.pipeline.provider_middleware.config.merged(self.config)
        return config.model or getattr(self.pipeline.provider, "model", None)

    @property
    def usage(self) -> Usage:
        """Tokens of the whole session so far, ``%%stream`` turns included: every
        stored answer carries the usage its provider reported."""
        total = Usage()
        for message in self._synced:
            data = message.meta.get("usage")
            if isinstance(data, dict):
                total = total + Usage.from_dict(data)
        return total

    @property
    def cost(self) -> float | None:
        """US dollars of the session so far; None when no answer had a known price."""
        costs = [
            m.meta["cost"] for m in self._synced if isinstance(m.meta.get("cost"), (int, float))
        ]
        return sum(costs) if costs else None

    # --- actions ----------------------------------------------------------------------

    @property
    def attachments(self) -> list[Attachment]:
        """The files that go with the next message (shown above the message box)."""
        return list(self._pending)

    def attach(self, *items: Any) -> list[Attachment]:
        """Attach figures, images or paths (images, PDFs) to the next message.

        They show as thumbnails above the message box until the message is sent
        (by Send, Enter or :meth:`send`); :meth:`clear_attachments` drops them.
        """
        try:
            added = [as_attachment(item) for item in items]
        except ConfigurationError as exc:
            raise usage_error(exc) from None
        self._pending.extend(added)
        self._show_pending()
        return added

    def clear_attachments(self) -> None:
        """Drop the files waiting for the next message."""
        self._pending.clear()
        self._show_pending()

    def _show_pending(self) -> None:
        self._attached.value = view.pending_attachments_html(self._pending)

    def _take_pending(self) -> tuple[Attachment, ...]:
        files, self._pending = tuple(self._pending), []
        self._show_pending()
        return files

    def _on_upload(self, change: dict[str, Any]) -> None:
        """The Attach button: each uploaded file becomes an attachment (then it resets)."""
        uploaded = change.get("new") or ()
        if not uploaded:
            return
        for item in uploaded:
            try:
                data = bytes(item["content"])
                name = str(item.get("name") or "")
                kind = str(item.get("type") or "")
                self._pending.append(
                    as_attachment((data, kind), name=name) if kind else as_attachment(data)
                )
            except (ConfigurationError, KeyError, TypeError) as exc:
                self._add_notice(f"Cannot attach {item.get('name', 'this file')}: {exc}")
        self._show_pending()
        try:
            self._upload.value = ()
        except Exception:
            logger.debug("could not reset the upload button", exc_info=True)

    async def send(self, text: str, *, attachments: Any = None) -> Result:
        """Send ``text`` as the user, stream the reply into the transcript, return its Result.

        ``attachments`` (figures, images, paths) go with it, after any attached
        with :meth:`attach`. Waits for a reply already streaming in this widget to
        end first. If the awaiting code is cancelled (Kernel > Interrupt), the
        reply is stopped too.
        """
        if not isinstance(text, str) or not text.strip():
            raise IPythonUsageError("send() needs a non-empty message")
        if attachments is not None:
            self.attach(*(attachments if isinstance(attachments, (list, tuple)) else [attachments]))
        files = self._take_pending()
        task = self._own_loop().create_task(self._turn(text, files))
        self._keep(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self.stop()
            raise

    @property
    def active_stream(self) -> Stream | None:
        """The turn being answered now (or waiting to start), if any."""
        turns = self._turns
        return turns[0] if turns else None

    def stop(self) -> None:
        """Stop the reply that is streaming (safe from any thread); its text so far is kept.

        Turns queued behind it (``send()`` calls from code) are stopped too.
        """
        for stream in list(self._turns):
            stream.stop()  # thread-safe, valid in every phase of the turn

    async def retry(self) -> Result:
        """Send the last message whose reply failed again."""
        if self._last_failed is None:
            raise UsageError("there is no failed reply to retry")
        return await self.send(self._last_failed)

    async def refresh(self) -> list[Message]:
        """Read the session from the store and show what is new; returns the history."""
        self._own_loop()
        await self._locked_sync()
        return self.history

    async def new_chat(self, session_id: str | None = None, *, fork: bool = False) -> str:
        """Continue in a new session: empty, or a copy of this one (``fork=True``).

        The old session stays in the store (``Chat(session_id=old)`` reopens it).
        Returns the new session id.
        """
        self._own_loop()
        if self.streaming:
            raise UsageError("a reply is streaming: stop it before starting a new chat")
        store = self.pipeline.state_store
        if session_id is None:
            session_id = await self._fresh_session_id()
        check_session_id(session_id)
        if fork:
            await store.fork(self.session_id, session_id)
        self.session_id = session_id
        await self._locked_sync()
        return session_id

    def on_reply(self, callback: ReplyCallback, remove: bool = False) -> None:
        """Call ``callback(result)`` after every reply (finished, stopped or failed).

        A coroutine function is run as a task. ``remove=True`` unregisters it.
        """
        if remove:
            self._reply_callbacks.remove(callback)
        else:
            self._reply_callbacks.append(callback)

    def export(self, format: str = "json", path: str | Path | None = None) -> str:
        """The conversation as JSON or Markdown (``format="markdown"``); written to ``path`` too."""
        if format in ("md", "markdown"):
            text = self._export_markdown()
        elif format == "json":
            usage = self.usage
            data = {
                "title": self.title,
                "session_id": self.session_id,
                "model": self.model,
                "exported_at": time.time(),
                "messages": [m.to_dict() for m in self._synced],
                "usage": usage.to_dict() if self._results else None,
                "cost": self.cost,
            }
            text = json.dumps(data, indent=2, ensure_ascii=False)
        else:
            raise UsageError(f"unknown export format {format!r}: use 'json' or 'markdown'")
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def close(self) -> None:
        """Stop any reply and release every widget of the chat (their comms)."""
        self.stop()
        for task in list(self._tasks):
            if not task.done() and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(task.cancel)
        for entry in self._entries:
            _close_tree(entry.widget)
        for child in self.children:
            _close_tree(child)
        _close_tree(self._empty)
        super().close()

    # --- handlers (any thread) --------------------------------------------------------

    def _on_send_click(self, _button: Any) -> None:
        text = self.input.value
        self._box.received()  # whatever the front end showed as pending is now handled
        if not text.strip() or self.streaming:
            return
        self.input.value = ""
        files = self._take_pending()
        self._schedule(lambda: self._turn(text, files))

    def _schedule(self, make_coroutine: Callable[[], Any]) -> None:
        """Start ``make_coroutine()`` as a task on the kernel's loop, from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._add_notice(
                "This chat has no running event loop: create it in a notebook cell "
                "(or call 'await chat.send(...)' from async code)."
            )
            return
        loop.call_soon_threadsafe(lambda: self._spawn(make_coroutine()))

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._keep(task)
        return task

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, IPythonUsageError):
                return  # already shown as a notice in the transcript
            logger.error("chat %r: %s", self.session_id, exc, exc_info=exc)

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        running = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = running
        elif running is not self._loop:
            raise UsageError(
                "this Chat belongs to another event loop (the one it was created on); "
                "await it from that loop, e.g. in a notebook cell"
            )
        return running

    def _on_title(self, change: dict[str, Any]) -> None:
        self._heading.value = view.header_html(self.title, self.session_id)

    @traitlets.validate("session_id")
    def _check_session(self, proposal: dict[str, Any]) -> str:
        value = check_session_id(proposal["value"])
        if self.streaming:
            raise UsageError("a reply is streaming: stop it before switching sessions")
        return value

    @traitlets.validate("update_interval")
    def _check_interval(self, proposal: dict[str, Any]) -> float:
        return max(0.05, float(proposal["value"]))

    def _on_session(self, change: dict[str, Any]) -> None:
        # Another session: forget what was shown, then read it from the store.
        self._heading.value = view.header_html(self.title, self.session_id)
        for entry in self._entries:
            _close_tree(entry.widget)
        self._entries.clear()
        self._synced = []
        self._results = []
        self._last_failed = None
        self._last_status = ""
        self._show_entries()
        self._update_footer()
        if self._loop is not None and not self._loop.is_closed():
            self._schedule(self._locked_sync)

    # --- one turn ---------------------------------------------------------------------

    def _with_context(self, text: str) -> tuple[str, tuple[Attachment, ...]]:
        """``{name}``, ``{In[3]}``, ``{Err}``... as in a ``%%stream`` cell; figures attached."""
        if not self.context:
            return text, ()
        try:
            from IPython import get_ipython
        except ImportError:
            return text, ()
        shell = get_ipython()
        if shell is None:
            return text, ()
        from . import context
        from .defaults import defaults
        from .interpolate import substitute

        settings = defaults()
        done = substitute(
            text,
            shell.user_ns,
            max_chars=settings.max_var_chars,
            max_rows=settings.max_var_rows,
            errors=context.ERRORS,
        )
        return done.text, tuple(done.attachments)

    async def _turn(self, text: str, files: tuple[Attachment, ...] = ()) -> Result:
        # The turn exists before anything else happens, so Stop always has a target.
        from .interpolate import InterpolationError

        try:
            text, figures = self._with_context(text)
        except (InterpolationError, ConfigurationError) as exc:
            self._add_notice(str(exc.args[0] if exc.args else exc))
            raise IPythonUsageError(str(exc.args[0] if exc.args else exc)) from None
        files = (*files, *figures)
        options: dict[str, Any] = {}
        if files:
            options["attachments"] = files
        if self.schema is not None:
            options["schema"] = self.schema
        if self.tools:
            options["tools"] = self.tools
            if self.max_tool_rounds is not None:
                options["max_tool_rounds"] = self.max_tool_rounds
            options["approve"] = self._approve  # reads chat.approve at each call
        try:
            stream = self.pipeline.stream(
                text, session=self.session_id, config=self.config, **options
            )
        except (ConfigurationError, PkNotebookError) as exc:
            # A missing key, a closed pipeline: said in the transcript and, for code
            # that awaited send(), as one line (IPython's UsageError), not a traceback.
            self._add_notice(_describe(exc))
            raise usage_error(exc) from None
        self._turns.append(stream)
        try:
            return await self._run_turn(text, stream, files)
        finally:
            self._turns.remove(stream)

    async def _run_turn(
        self, text: str, stream: Stream, files: tuple[Attachment, ...] = ()
    ) -> Result:
        async with self._lock:
            try:
                await self._sync()  # messages %%stream cells added since: before this turn
            except Exception as exc:
                logger.warning("chat %r: could not read the session: %s", self.session_id, exc)
            self._set_streaming(True)
            user_entry = self._add_entry("user", Message("user", text, attachments=files))
            reply = widgets.HTMLMath(view.assistant_html("", streaming=True))
            reply_entry = self._add_entry("assistant", None, widget=reply)
            cancelled: asyncio.CancelledError | None = None
            parts = TurnParts()
            pieces: list[str] = []  # the text as it streamed, which parts' text blocks index
            try:
                async with stream:
                    await self._pump(stream, reply, parts, pieces)
            except asyncio.CancelledError as exc:
                cancelled = exc  # not our Stop (that ends the stream): an Interrupt
            except Exception:
                pass  # the error is on the result, shown below with a Retry button
            finally:
                self._set_streaming(False)
            result = await stream.wait_closed()

            parts.finish(result.tool_results)
            # Text said before a tool call stays above its card; the answer is what follows.
            said = "".join(pieces) if parts.has_parts else result.text
            head, answer = split_answer(parts, said)
            reply.value = view.assistant_html(
                self._answer_markdown(result, answer),
                status=_status_of(result),
                parts=head,
                said=said,
            )
            reply_entry.message = result.messages[-1] if result.messages else None
            self._results.append(result)
            self._last_status = format_status(result)
            if result.error is not None:
                self._last_failed = text
                self._add_notice(_describe(result.error), retry=text)
            if cancelled is not None:
                self._update_footer()
                raise cancelled
            try:
                await self._sync(turn=(user_entry, reply_entry))
            except Exception as exc:
                logger.warning("chat %r: could not read the session: %s", self.session_id, exc)
            self._update_footer()
            self._update_saved()
        self._fire_reply(result)
        return result

    async def _pump(
        self, stream: Stream, reply: widgets.HTML, parts: TurnParts, pieces: list[str]
    ) -> None:
        """Read the stream into ``reply`` (and ``parts``, ``pieces``), re-rendering at most
        once per interval."""
        schema = self.schema
        fields = schema_fields(schema)

        def render(_changes: str) -> None:
            said = "".join(pieces)
            head, text = split_answer(parts, said)
            if schema is not None and text:
                # The object parsed so far, fields still to come shown as "…".
                text = object_markdown(schema.partial(text), title=schema.name, pending=fields)
            reply.value = view.assistant_html(text, streaming=True, parts=head, said=said)
            self._update_footer(format_status(stream))

        # One mark per change (text, reasoning, a tool event): the throttle only counts them.
        throttle = Throttle(render, interval=self.update_interval)
        self._showing = (parts, lambda: throttle.push("."))
        try:
            async for chunk in stream:
                if chunk.reasoning:
                    parts.add_reasoning(chunk.reasoning)
                    throttle.push(".")
                if chunk.tool is not None:
                    parts.add_tool_event(chunk.tool)
                    throttle.push(".")
                if chunk.content:
                    parts.add_text(chunk.content)
                    pieces.append(chunk.content)
                    throttle.push(".")
        finally:
            self._showing = None
            throttle.close()

    def _stored_answer(self, text: str, status: str | None) -> str:
        """A stored answer's text; with a schema, the object it validates to (or its raw
        JSON, as code), as shown live."""
        if self.schema is None or not text.strip():
            return text
        if status is None:
            try:
                parsed = self.schema.parse(text)
            except Exception:
                pass
            else:
                return final_object_bundle(self.schema, text, parsed, True)["text/markdown"]
        if not text.lstrip().startswith(("{", "[")):
            return text  # prose (a %%stream cell's answer in this session), as it is
        return final_object_bundle(self.schema, text, None, False)["text/markdown"]

    def _answer_markdown(self, result: Result, answer: str) -> str:
        """The reply's final ``answer`` (its text after its tool calls): with a schema,
        the validated object (or the raw JSON, as code)."""
        if self.schema is None:
            return answer
        valid = result.status is StreamStatus.FINISHED and result.error is None
        return final_object_bundle(self.schema, answer, result.parsed, valid)["text/markdown"]

    async def _approve(self, call: ToolCall) -> bool:
        """The hook the turn awaits before each tool call (``approve=``)."""
        approve = self.approve
        if approve is None or approve is False:
            return True
        if callable(approve):
            outcome = approve(call)
            return bool(await outcome) if inspect.isawaitable(outcome) else bool(outcome)
        return await self._ask(call)

    async def _ask(self, call: ToolCall) -> bool:
        """Run / Deny buttons in the transcript; True once Run is clicked."""
        loop = self._own_loop()
        decision: asyncio.Future[bool] = loop.create_future()
        if self._showing is not None:  # the call's card says what it waits for
            parts, changed = self._showing
            if parts.waiting_for_approval(call.id, call.name, call.arguments) is not None:
                changed()

        def decide(value: bool) -> None:  # a click, possibly on a subshell's thread
            def settle() -> None:
                if not decision.done():
                    decision.set_result(value)

            loop.call_soon_threadsafe(settle)

        question = widgets.HTML(view.approval_html(call.name, call.arguments))
        auto = widgets.Layout(width="auto")
        run = widgets.Button(
            description="Run", button_style="success", tooltip="Run this call", layout=auto
        )
        deny = widgets.Button(
            description="Deny", tooltip="Do not run it; the model is told", layout=auto
        )
        run.add_class("pk-chat-run")
        deny.add_class("pk-chat-deny")
        run.on_click(lambda _b: decide(True))
        deny.on_click(lambda _b: decide(False))
        box = widgets.HBox([question, run, deny])
        box.add_class("pk-chat-approve")
        entry = _Entry("notice", box)
        self._entries.append(entry)
        self._show_entries()
        try:
            return await decision
        finally:
            if entry in self._entries:
                self._entries.remove(entry)
            self._show_entries()
            _close_tree(box)

    def _set_streaming(self, value: bool) -> None:
        self.set_trait("streaming", value)
        self._stop_button.disabled = not value
        self._send_button.disabled = value
        self._new_button.disabled = value
        if value:
            self.add_class("pk-chat-busy")  # the front end keeps a draft on Enter
        else:
            self.remove_class("pk-chat-busy")
        if value:
            self._update_footer("waiting for the first chunk…")

    def _fire_reply(self, result: Result) -> None:
        for callback in list(self._reply_callbacks):
            try:
                outcome = callback(result)
                if inspect.isawaitable(outcome):
                    self._keep(asyncio.ensure_future(outcome))
            except Exception:
                logger.exception("a chat on_reply callback failed")

    # --- the transcript and the store --------------------------------------------------

    async def _locked_sync(self) -> None:
        async with self._lock:
            await self._sync()
            self._update_footer()
            self._update_saved()

    async def _sync(self, turn: tuple[_Entry, _Entry] | None = None) -> None:
        """Show the store's messages that are not on screen yet.

        ``turn`` are the entries of the turn that has just ended: if the store now
        ends with its two messages, they are marked as synced, and whatever other
        writers (``%%stream`` cells, another chat) added before them is shown
        before them. If the store is not an extension of what was shown (the
        session was deleted or rewritten), the transcript is rebuilt from it.
        """
        stored = await self.pipeline.state_store.load(self.session_id)
        known = len(self._synced)
        pending = {id(e) for e in turn} if turn else set()
        if stored[:known] != self._synced:
            kept = [e for e in self._entries if not e.synced and id(e) not in pending]
            for entry in self._entries:
                if entry.synced or id(entry) in pending:
                    _close_tree(entry.widget)
            self._entries = self._entries_for(stored)
            self._entries.extend(kept)
            self._synced = list(stored)
            self._show_entries()
            return
        new = stored[known:]
        if turn is not None:
            user_entry, reply_entry = turn
            # The turn's messages: the user's, then (with tools) the assistant's calls and
            # the tools' results, shown inside the reply, then the reply.
            if len(new) >= 2 and new[-1] == reply_entry.message:
                for k in range(len(new) - 2, -1, -1):
                    if _same_user_message(new[k], user_entry.message):
                        user_entry.message, reply_entry.message = new[k], new[-1]
                        user_entry.synced = reply_entry.synced = True
                        new = new[:k]
                        break
            at = self._entries.index(user_entry)
        else:
            at = len(self._entries)
        self._entries[at:at] = self._entries_for(new)
        self._synced = list(stored)
        self._show_entries()

    def _entries_for(self, messages: list[Message]) -> list[_Entry]:
        """Entries for stored messages; a turn's tool messages go inside its reply."""
        return [self._entry_for(m, parts, text) for m, parts, text in group_turns(messages)]

    def _entry_for(self, message: Message, parts: TurnParts | None, text: str) -> _Entry:
        if message.role == "user":
            widget = widgets.HTML(view.user_html(message.content, message.attachments))
        else:
            widget = widgets.HTMLMath(
                view.stored_assistant_html(message, parts, text, self._stored_answer)
            )
        return _Entry(message.role, widget, message, synced=True)

    def _add_entry(
        self, kind: str, message: Message | None, *, widget: widgets.Widget | None = None
    ) -> _Entry:
        if widget is None:
            assert message is not None
            widget = widgets.HTML(view.user_html(message.content, message.attachments))
        entry = _Entry(kind, widget, message)
        self._entries.append(entry)
        self._show_entries()
        return entry

    def _add_notice(self, text: str, *, retry: str | None = None) -> None:
        label = widgets.HTML(view.notice_html(text))
        items: list[widgets.Widget] = [label]
        if retry is not None:
            button = widgets.Button(description="Retry", tooltip="Send this message again")
            button.add_class("pk-chat-tool")

            def again(_b: Any, message: str = retry) -> None:
                if not self.streaming:
                    _b.disabled = True
                    self._schedule(lambda: self._turn(message))

            button.on_click(again)
            items.append(button)
        box = widgets.HBox(items)
        box.add_class("pk-chat-notice")
        self._entries.append(_Entry("notice", box))
        self._show_entries()

    def _show_entries(self) -> None:
        children = tuple(e.widget for e in self._entries)
        self._messages.children = children or (self._empty,)

    # --- footer and export --------------------------------------------------------------

    def _summary(self) -> str:
        parts = [self.model or "model unknown", f"{len(self._synced)} messages"]
        usage = self.usage
        if usage.total_tokens:
            # Some answer came without usage: the count is an estimate, and says so.
            approx = "≈" if usage.estimated else ""
            label = " (estimated)" if usage.estimated else ""
            parts.append(f"{approx}{usage.total_tokens:,} tokens{label}")
            cost = self.cost
            parts.append(f"{approx}${cost:.4f}" if cost is not None else "cost unknown")
        return " · ".join(parts)

    def _update_footer(self, status: str | None = None) -> None:
        self._footer.value = view.footer_html(
            self._summary(), self._last_status if status is None else status
        )

    async def _fresh_session_id(self) -> str:
        base = re.sub(r"-\d+$", "", self.session_id) or "chat"
        store = self.pipeline.state_store
        for number in range(2, 10_000):
            candidate = f"{base}-{number}"
            if candidate != self.session_id and not await store.load(candidate):
                return candidate
        return f"{base}-{secrets.token_hex(3)}"

    def _export_markdown(self) -> str:
        model = self.model or "unknown"
        lines = [f"# {self.title}", "", f"*Session `{self.session_id}`, model {model}*", ""]
        for message in self._synced:
            if message.role == "user":
                lines += ["### You", "", message.content, ""]
            elif message.role == "assistant":
                lines += ["### Assistant", "", message.content, ""]
                if message.status is not None:
                    lines += [f"*({view.marker_label(message.status)})*", ""]
            else:
                lines += [f"### {message.role.capitalize()}", "", message.content, ""]
        return "\n".join(lines).rstrip() + "\n"


def _same_user_message(stored: Message, shown: Message | None) -> bool:
    """The stored copy of the message this chat sent (large files are a note there)."""
    if shown is None or stored == shown:
        return stored == shown
    if stored.role != shown.role or stored.attachments == shown.attachments:
        return False
    return stored.content == shown.content or stored.content.startswith(shown.content + "\n")


def _status_of(result: Result) -> str | None:
    return None if result.status is StreamStatus.FINISHED else result.status.value


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"


def _close_tree(widget: widgets.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    try:
        widget.close()
    except Exception:
        logger.debug("could not close %r", widget, exc_info=True)
