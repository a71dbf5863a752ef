"""Streaming to the web: SSE, WebSocket and an OpenAI-compatible endpoint.

    from pk_notebook.web import create_app
    app = create_app(pipe)    # an ASGI (Starlette) app; serve it with uvicorn
    app = create_app(pipe, tools=[get_weather])   # tools the server runs in every turn

or from a shell: ``pk-notebook serve --provider mock --port 8080``. Needs the
``web`` extra (``pip install 'pk-notebook[web]'``).

What a turn sends. ``/stream`` (SSE) names each event; ``/ws`` sends the same
payload as a JSON message with ``"type"`` set to the event's name and ``"id"``
(the prompt's number on the connection) added, and, on every message of an
answer, ``"answer_id"`` and ``"seq"`` (the event's number in the answer: what a
resume asks to continue after). Every payload is JSON.

==============  =====================================================================
event / type    payload
==============  =====================================================================
``start``       ``{"answer_id"}``: the turn opened (SSE: the id for resume and stop;
                ``/ws`` adds ``"resume_token"``, which a reconnecting socket sends
                back to resume the answer; see :mod:`.ws`)
``reasoning``   ``{"index", "text"}``: a new piece of the model's thinking, kept apart
                from the answer
``chunk``       ``{"index", "content"}``: a new piece of the answer's text (unchanged
                from before reasoning and tools existed)
``tool``        ``{"kind", "call_id", "name", "index", "round"}`` plus, when the event
                sets them, ``"arguments"`` (the JSON text so far), ``"delta"`` (its
                new piece), ``"output"`` (the full text the model was sent, not
                capped: these are the server's own tools; a failed call's error text
                is redacted by the pipeline), ``"duration"`` (seconds it ran)
``error``       ``{"error": {"type", "message", ...}}`` (``/ws`` adds ``"final"``)
``result``      the :class:`~pk_notebook.runtime.types.Result` as a dict: ``text``,
                ``status``, ``finish_reason``, ``usage`` (all the turn's model calls),
                ``reasoning``, ``tool_calls``, ``tool_results`` (``call``, ``output``,
                ``status``, ``duration`` each), ``model_calls``, ... (``/ws``: under
                ``"result"``)
==============  =====================================================================

``index`` numbers the turn's chunks (every event above but ``start``, ``error``
and ``result`` is one chunk); a chunk with both thinking and text gives a
``reasoning`` then a ``chunk`` event. A tool call's ``kind`` goes ``start`` (its
name is known), ``arguments`` (repeated, as they stream), ``call`` (complete),
``running``, then one of ``result``, ``error``, ``denied``, ``stopped``;
``round`` counts the turn's model calls from 1, ``index`` (in a ``tool``
payload) is the call's place among the calls of its round. SSE then sends
``data: [DONE]``.

Resume and stop (``/stream``): every SSE event has an ``id``, ``{answer_id}:{n}``
(``n`` counts the answer's events from 1). The answer runs detached from the
connection (:mod:`pk_notebook.web.answers`) and writes into a replay buffer
(:mod:`pk_notebook.web.replay`: this process's memory, and a Redis Stream when the
sessions are in Redis); a request with ``Last-Event-ID`` (what ``EventSource`` sends
when it reconnects), or ``?answer_id=...&after=n``, receives the rest of that
answer, on any server process. With no client attached the answer runs on for
``resume_grace`` seconds, then is stopped and saved as interrupted.
``POST /stream/{answer_id}/stop`` stops it at once from any process. A resume
that cannot be served whole gets an ``error`` event with ``code``
``resume_gap``, ``resume_expired`` or ``answer_lost``.

``POST /api/chat`` speaks the Vercel AI SDK's UI message stream protocol
(:mod:`pk_notebook.web.ai_sdk`).

Tools: the server's, given to :func:`create_app` (``pk-notebook serve --tools
module:function``), run in every turn; no client can name, add or remove them
(``/stream`` and ``/ws`` refuse a request carrying ``tools`` with 422
``ToolsNotAllowed``). ``/v1/chat/completions`` also takes the client's own
``tools`` with OpenAI's semantics: see :mod:`pk_notebook.web.openai_compat` and
:mod:`pk_notebook.web.tools`.
"""

from .app import create_app
from .settings import WebSettings

__all__ = ["WebSettings", "create_app"]
