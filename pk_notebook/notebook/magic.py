"""``%%stream`` (ask, live) and ``%stream`` (config, sessions, history, reset, providers, last).

In a kernel, a ``%%stream`` cell never reaches :meth:`StreamMagics.stream_cell`:
the input transformer turns it into a top-level ``await`` first (see
``transformer.py`` for why). The cell magic remains for ``%%stream --help`` and
for places where a cell cannot await (terminal IPython, ``ip.run_cell_magic``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
from collections.abc import Coroutine
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from ..runtime.errors import ConfigurationError, PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.store import StateStore
from ..runtime.sync import run_sync
from ..runtime.types import UNSET, Message
from ..sessions.spec import describe_store
from .defaults import defaults, reset_defaults
from .markdown import escape_markdown, safe_markdown
from .options import (
    SUBCOMMANDS,
    cell_spec,
    config_spec,
    history_spec,
    parse,
    record_spec,
    replay_spec,
    reset_spec,
    sessions_spec,
    usage_error,
)
from .parts_view import group_turns, turn_bundle
from .runner import last_answer, last_result, run_cell_sync
from .status import format_status

T = TypeVar("T")

LINE_HELP = """Settings and sessions for ``%%stream`` (and ``Chat``).

::

    %stream config                      show the defaults
    %stream config --provider openai:gpt-4o-mini --temperature 0.3
    %stream config --store sqlite       keep sessions across restarts (or PATH.sqlite3, redis://...)
    %stream sessions                    list the sessions in the store
    %stream history [ID]                show a session (default: the last cell's session)
    %stream reset [ID]                  forget a session (default: the last cell's session)
    %stream history ID --pipeline VAR   the same for a pipeline's store (also sessions, reset)
    %stream providers                   the providers you can use
    %stream last                        status line of the last %%stream cell
    %stream record PATH                 write the provider's real calls to a cassette (off)
    %stream replay PATH [--pace 1.0]    answer from a cassette, offline (off)

``%stream config --help`` lists every setting (``%stream history --help``, ...).
To ask a question, use the cell magic: ``%%stream`` on the first line, the
prompt below (``%%stream --help``).
"""


@magics_class
class StreamMagics(Magics):
    """The ``%stream`` / ``%%stream`` magics; registered by ``%load_ext pk_notebook``."""

    # IPython's decorators are typed as taking Never; they work on methods like these.
    @cell_magic("stream")  # type: ignore[arg-type]
    def stream_cell(self, line: str, cell: str) -> None:
        run_cell_sync(self.shell, line, cell)

    @line_magic("stream")  # type: ignore[arg-type]
    def stream_line(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot read {line!r}: {exc}") from None
        if not words or words[0] in ("-h", "--help", "help"):
            print(LINE_HELP)
            return
        command, rest = words[0], line.strip()[len(words[0]) :].strip()
        if command not in SUBCOMMANDS:
            raise UsageError(
                f"unknown %stream command {command!r}: use one of {', '.join(SUBCOMMANDS)}. "
                "To ask a question, put %%stream on the first line of a cell, the prompt below."
            )
        getattr(self, f"_{command}")(rest)

    # --- subcommands ------------------------------------------------------------------

    def _config(self, rest: str) -> None:
        args = parse(config_spec, rest)
        if args.help:
            print(config_spec.__doc__)
            return
        if args.reset:
            reset_defaults()
        changes: dict[str, Any] = {}
        if args.provider is not None:
            changes["provider"] = args.provider
            if args.model is None:
                changes["model"] = None  # a new provider starts from its own default model
        if args.model is not None:
            changes["model"] = None if args.model.lower() == "none" else args.model
        if args.temperature is not None:
            changes["temperature"] = args.temperature
        if args.max_tokens is not None:
            changes["max_tokens"] = args.max_tokens
        if args.system is not None:
            changes["system"] = args.system or None
        if args.store is not None:
            changes["store"] = args.store
        if args.timeout is not UNSET:
            changes["timeout"] = args.timeout
        if args.idle_timeout is not UNSET:
            changes["idle_timeout"] = args.idle_timeout
        if args.max_var_chars is not None:
            changes["max_var_chars"] = args.max_var_chars
        if args.max_var_rows is not None:
            changes["max_var_rows"] = args.max_var_rows
        settings = defaults()
        if args.api is not None or "provider" in changes:
            # The API belongs to a provider: a new provider starts from its own default.
            options = dict(settings.provider_options)
            options.pop("api", None)
            if args.api is not None and args.api.lower() != "none":
                options["api"] = args.api
            if options != settings.provider_options:
                changes["provider_options"] = options
        if changes:
            try:
                if "provider" in changes:
                    _check_provider(changes["provider"])
                if changes.get("provider_options", {}).get("api"):
                    _check_api(changes.get("provider", settings.provider), args.api)
                settings.update(**changes)
                if "store" in changes:
                    settings.state_store()  # fail now, not in the next cell
            except (ConfigurationError, PkNotebookError) as exc:
                raise usage_error(exc) from None
        described = settings.describe()
        width = max(len(k) for k in described)
        lines = [f"{key:<{width}}  {_show(value)}" for key, value in described.items()]
        if settings.cassette is not None:
            lines.append(f"{'cassette':<{width}}  {_cassette_line(settings)}")
        print("\n".join(lines))

    def _record(self, rest: str) -> None:
        args = parse(record_spec, rest)
        if args.help or not args.path:
            print(record_spec.__doc__)
            return
        self._cassette("record", args.path, 0.0)

    def _replay(self, rest: str) -> None:
        args = parse(replay_spec, rest)
        if args.help or not args.path:
            print(replay_spec.__doc__)
            return
        if args.pace < 0:
            raise UsageError(
                f"--pace must be 0 or more (1.0: the recorded timing), not {args.pace}"
            )
        self._cassette("replay", args.path, args.pace)

    def _cassette(self, mode: str, path: str, pace: float) -> None:
        """``%stream record|replay PATH`` (or ``off``): the default provider's transport."""
        settings = defaults()
        if path.lower() == "off":
            was = settings.cassette
            settings.update(cassette=None)
            print(f"{mode}: off" if was is None else f"{was[0]}ing {was[1]}: off")
            return
        if not settings.uses_http():
            print(
                f"{mode}: the {settings.describe()['provider']} provider makes no HTTP calls, "
                f"so there is nothing to {mode}; choose one with %stream config --provider NAME"
            )
            return
        if mode == "replay" and not os.path.exists(path):
            raise UsageError(f"%stream replay: no cassette at {path} (record one first)")
        settings.update(cassette=(mode, path, pace))
        try:
            settings.pipeline()
        except ConfigurationError as exc:
            settings.update(cassette=None)
            raise usage_error(exc) from None
        print(_cassette_line(settings))

    def _sessions(self, rest: str) -> None:
        args = parse(sessions_spec, rest)
        if args.help:
            print(sessions_spec.__doc__)
            return
        store, where = self._store(args.pipeline)
        sessions = _call_store(store.list_sessions(), where)
        if not sessions:
            print(f"no sessions in {where} yet (start one with %%stream -s NAME)")
            return
        width = max(len(s.session_id) for s in sessions)
        rows = [f"{'session':<{width}}  messages  last used"]
        for info in sessions:
            when = _dt.datetime.fromtimestamp(info.updated_at).strftime("%Y-%m-%d %H:%M:%S")
            rows.append(f"{info.session_id:<{width}}  {info.messages:>8}  {when}")
        print("\n".join(rows))

    def _history(self, rest: str) -> None:
        args = parse(history_spec, rest)
        if args.help:
            print(history_spec.__doc__)
            return
        session = self._session_arg("history", args.session)
        store, where = self._store(args.pipeline)
        messages: list[Message] = _call_store(store.load(session), where)
        if not messages:
            print(f"session {session!r} has no messages in {where}")
            return
        md, plain = [], []
        # A turn with tools: its calls and results show as cards inside the answer, with
        # its thinking, as in the cell (parts_view.py), not as messages of their own.
        # Text said before a call stays in its place, as its own stretch.
        grouped = group_turns(messages)
        shown = {id(m) for m, _, _ in grouped}
        parts_of = {id(m): (p, t) for m, p, t in grouped if p is not None}
        for message in messages:
            if message.role in ("assistant", "tool") and id(message) not in shown:
                continue
            flag = f" ({message.status})" if message.status else ""
            # Stored answers are model text: shown through the same safe Markdown as
            # the cell (raw HTML inert, dangerous links dead, math intact).
            body = safe_markdown(message.content)
            text = message.content
            if id(message) in parts_of:
                parts, said = parts_of[id(message)]
                # render_text=None: each stretch as the cell shows it (safe_markdown, an
                # open code fence closed, so a card after it stays a card).
                turn = turn_bundle(parts, said, render_text=None)
                body, text = turn["text/markdown"], turn["text/plain"]
            md.append(f"**{message.role}**{escape_markdown(flag)}\n\n{body}")
            plain.append(f"[{message.role}{flag}]\n{text}")
        display(
            {"text/markdown": "\n\n---\n\n".join(md), "text/plain": "\n\n".join(plain)}, raw=True
        )

    def _reset(self, rest: str) -> None:
        args = parse(reset_spec, rest)
        if args.help:
            print(reset_spec.__doc__)
            return
        session = self._session_arg("reset", args.session)
        store, where = self._store(args.pipeline)
        existed = _call_store(store.delete(session), where)
        print(f"session {session!r} {'forgotten' if existed else 'did not exist'}")

    def _providers(self, rest: str) -> None:
        _no_arguments("providers", rest)
        from ..providers.registry import available_providers

        current = defaults().describe()["provider"]
        rows = []
        specs = available_providers()
        width = max(len(spec.name) for spec in specs)
        for spec in specs:
            if spec.key_env:
                have = any(os.environ.get(name) for name in spec.key_env)
                key = f"key: {'set' if have else 'set ' + ' or '.join(spec.key_env)}"
            else:
                key = "no key needed"
            mark = "*" if spec.name == current else " "
            model = spec.default_model or "-"
            rows.append(f"{mark} {spec.name:<{width}}  {model:<18} {key:<40} {spec.description}")
        print(
            "\n".join(rows) + "\n(* = current; choose with %stream config --provider NAME[:MODEL])"
        )

    def _last(self, rest: str) -> None:
        """The last answer again, whole and rendered as in its cell, then its status line.

        A browser reload while a cell streams loses that cell's view (outputs sent
        while no front end is attached go nowhere); the kernel still has the answer.
        """
        _no_arguments("last", rest)
        last = last_answer()
        if last is None:
            print("no %%stream cell has run yet")
            return
        display(last.bundle, raw=True)
        lines = [format_status(last.result)]
        if last.substituted:
            lines.append(last.substituted)
        print("\n".join(lines))

    def _session_arg(self, command: str, session: str | None) -> str:
        if session:
            return session
        result = last_result()
        if result is None or result.session_id is None:
            raise UsageError(f"name the session: %stream {command} ID (see %stream sessions)")
        return result.session_id

    def _store(self, pipeline: str | None) -> tuple[StateStore, str]:
        """The store ``--pipeline VAR`` names (or the notebook's), and words for it."""
        if pipeline is None:
            settings = defaults()
            try:
                return settings.state_store(), f"the {describe_store(settings.store)} store"
            except (ConfigurationError, PkNotebookError, OSError) as exc:
                raise usage_error(exc) from None
        namespace = self.shell.user_ns if self.shell is not None else {}
        if pipeline not in namespace:
            raise UsageError(f"--pipeline {pipeline}: there is no variable {pipeline!r}")
        value = namespace[pipeline]
        if not isinstance(value, Pipeline):
            raise UsageError(
                f"--pipeline {pipeline}: expected a pk_notebook Pipeline, "
                f"got {type(value).__name__}"
            )
        return value.state_store, f"{pipeline}'s store"


StreamMagics.stream_cell.__doc__ = cell_spec.__doc__
StreamMagics.stream_line.__doc__ = LINE_HELP  # type: ignore[assignment]


def _no_arguments(command: str, rest: str) -> None:
    if rest.strip():
        raise UsageError(f"%stream {command} takes no arguments, got {rest.strip()!r}")


def _call_store(call: Coroutine[Any, Any, T], where: str) -> T:
    """Run one store call; a store that is down or broken is one line, not a traceback."""
    try:
        return run_sync(call)
    except (PkNotebookError, OSError) as exc:
        hint = (
            " Or use another store: %stream config --store memory"
            if where.startswith("the ")
            else ""
        )
        raise UsageError(usage_error(exc).args[0] + hint) from None


def _check_provider(spec: str) -> None:
    from ..providers.registry import available_providers, parse_spec

    name, _ = parse_spec(spec)
    known = {p.name for p in available_providers()}
    if name not in known:
        raise ConfigurationError(
            f"unknown provider {name!r}: choose one of {', '.join(sorted(known))}"
        )


def _check_api(spec: str, api: str) -> None:
    """``--api``: only the openai provider has a choice (Chat Completions or Responses)."""
    from ..providers.builtin import OPENAI_APIS
    from ..providers.registry import parse_spec

    name, _ = parse_spec(spec)
    if name != "openai":
        raise ConfigurationError(
            f"--api: the {name} provider has no choice of API (openai has: "
            f"{', '.join(OPENAI_APIS)})"
        )
    if api not in OPENAI_APIS:
        raise ConfigurationError(
            f"--api {api}: openai speaks {' or '.join(OPENAI_APIS)} (Chat Completions or "
            "the Responses API)"
        )


def _cassette_line(settings: Any) -> str:
    mode, path, pace = settings.cassette
    if mode == "record":
        line = f"recording the {settings.describe()['provider']} provider's calls to {path}"
    else:
        speed = "full speed" if not pace else f"pace {pace:g}"
        line = f"replaying {path} ({speed}, offline: nothing is sent)"
    if not settings.uses_http():
        line += " (unused: the mock makes no HTTP calls)"
    return line


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return str(value)
