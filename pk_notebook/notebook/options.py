"""The options of ``%%stream`` and ``%stream config``, parsed the IPython way.

The argument specs live on two plain functions (``cell_spec``, ``config_spec``)
so that the magic, the input transformer's coroutine and the tests all parse a
line the same way, and ``%%stream --help`` / ``%%stream?`` show one text.
Every mistake becomes IPython's ``UsageError``: one red line, no traceback.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
import textwrap
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..runtime.errors import ConfigurationError, redact
from ..runtime.store import check_session_id
from ..runtime.types import UNSET, ProviderConfig
from .context import DEFAULT_MAX_ROWS
from .interpolate import DEFAULT_MAX_CHARS, RULE
from .live import FORMATS, SURFACES

SUBCOMMANDS = ("config", "sessions", "history", "reset", "providers", "last", "record", "replay")


def seconds(text: str) -> float | None:
    """``"30"`` -> 30.0; ``"none"`` / ``"off"`` -> None (no limit)."""
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (e.g. 30) or 'none', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be positive (or 'none'), got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def identifier(text: str) -> str:
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python variable name")
    return text


def names(text: str) -> tuple[str, ...]:
    """``"get_weather, search_docs"`` -> ``("get_weather", "search_docs")`` (variable names)."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found:
        raise argparse.ArgumentTypeError("expected function names separated by commas")
    for name in found:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a Python function name")
    return found


@magic_arguments(name="%stream")
@argument(
    "-s",
    "--session",
    metavar="ID",
    help="continue the conversation ID: its history is sent and this turn is saved to it",
)
@argument(
    "-p",
    "--provider",
    metavar="SPEC",
    help="provider for this cell, e.g. mock or openai:gpt-4o-mini",
)
@argument(
    "-m",
    "--model",
    metavar="NAME",
    action="append",
    help="model for this cell; repeat it (or a comma list) to compare models side by side: "
    "-m openai:gpt-4o-mini -m anthropic:claude-haiku-4-5 (provider specs, models of -p, "
    "or Pipeline variables); one provider spec alone is the same as -p SPEC",
)
@argument("--system", metavar="TEXT", help="system prompt for this cell")
@argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature, 0 to 2")
@argument("--max-tokens", type=positive_int, metavar="N", help="stop the answer after N tokens")
@argument(
    "--timeout",
    type=seconds,
    default=UNSET,
    metavar="S",
    help="give up after S seconds in total ('none': never)",
)
@argument(
    "--idle-timeout",
    type=seconds,
    default=UNSET,
    metavar="S",
    help="give up after S seconds without content ('none': never)",
)
@argument(
    "-f", "--format", choices=FORMATS, help="render the answer as markdown (default), text, or code"
)
@argument("--lang", metavar="LANG", help="language of -f code (implies -f code), e.g. python")
@argument(
    "-o",
    "--out",
    type=identifier,
    metavar="VAR",
    help="store the Result (text, status, usage, timings) in VAR; with --schema, the "
    "validated object (None if the answer did not validate)",
)
@argument(
    "--schema",
    type=identifier,
    metavar="NAME",
    help="answer as data: NAME is a pydantic model, dataclass, TypedDict or JSON-schema "
    "dict of this notebook; the object fills in live, validated at the end",
)
@argument(
    "--attach",
    action="append",
    metavar="PATH",
    help="send a file with the prompt (an image or a PDF); repeat for several",
)
@argument(
    "--dry-run",
    action="store_true",
    help="show what would be sent (prompt, attachments, token and cost estimate); send nothing",
)
@argument(
    "--no-history",
    action="store_true",
    help="one-off question: no session history is sent or saved, even with -s",
)
@argument(
    "--raw", action="store_true", help="send the cell exactly as written: no {name} substitution"
)
@argument(
    "--pipeline",
    type=identifier,
    metavar="VAR",
    help="use the Pipeline object in VAR instead of the notebook's",
)
@argument(
    "--tools",
    type=names,
    metavar="F1,F2",
    help="Python functions of this notebook the model may call, e.g. get_weather,search_docs",
)
@argument(
    "--max-tool-rounds",
    type=positive_int,
    metavar="N",
    help="at most N rounds of tool calls before the final answer (default 8)",
)
@argument(
    "--approve",
    action="store_true",
    help="ask before each tool call: Run / Deny buttons in the cell",
)
@argument(
    "--live",
    choices=SURFACES,
    default="auto",
    help="live view: auto (default), widget, display, text or none",
)
@argument("-h", "--help", action="store_true", help="show this help")
def cell_spec(line: str = "", cell: str | None = None) -> None:
    """Stream a model's answer to the cell's text, live, as Markdown.

    ::

        %%stream --session trip -o answer
        Plan a day in {city}. Keep it to 5 bullet points.

    The answer appears as it is generated, with a Stop button and a status line
    (elapsed, time to first chunk, chunks, tokens/s, finish reason). Stop or
    Kernel > Interrupt closes the provider's stream; the partial text stays,
    marked as stopped, and a session stores it as an interrupted turn. The final
    output is the answer alone (plus a note if it is incomplete), so notebooks
    re-run under nbval give the same output.

    Tools: ``--tools get_weather,search_docs`` lets the model call these
    functions of the notebook (sync or async; their type hints and docstring
    tell the model how); each call shows as a card in the cell, and the model's
    thinking, if it shows any, as a collapsible "Thinking" section above the
    answer. ``--approve`` shows Run / Deny before each call (where buttons cannot
    work, calls are denied and a line says why).

    Variables: RULE_PLACEHOLDER

    Defaults (provider, model, store, timeouts) come from ``%stream config``;
    see ``%stream?`` for the line magic (config, sessions, history, reset,
    providers, last).
    """


cell_spec.__doc__ = (cell_spec.__doc__ or "").replace(
    "Variables: RULE_PLACEHOLDER", textwrap.fill("Variables: " + RULE, 80)
)


@magic_arguments(name="stream config")
@argument(
    "-p", "--provider", metavar="SPEC", help="default provider, e.g. mock or openai:gpt-4o-mini"
)
@argument("-m", "--model", metavar="NAME", help="default model ('none': the provider's own)")
@argument(
    "-t",
    "--temperature",
    type=float,
    metavar="T",
    help="default temperature ('none' not accepted; use --reset)",
)
@argument("--max-tokens", type=positive_int, metavar="N", help="default token limit")
@argument("--system", metavar="TEXT", help="default system prompt ('' for none)")
@argument(
    "--store",
    metavar="STORE",
    help="where sessions live: memory, sqlite, PATH.sqlite3 or redis://host:port/db",
)
@argument(
    "--timeout",
    type=seconds,
    default=UNSET,
    metavar="S",
    help="total time limit per answer ('none': no limit)",
)
@argument(
    "--idle-timeout",
    type=seconds,
    default=UNSET,
    metavar="S",
    help="time limit without content ('none': no limit)",
)
@argument(
    "--max-var-chars",
    type=positive_int,
    metavar="N",
    help=f"cut each {{name}} value in a prompt after N characters (default {DEFAULT_MAX_CHARS})",
)
@argument(
    "--max-var-rows",
    type=positive_int,
    metavar="N",
    help=f"rows of a DataFrame shown in a prompt (default {DEFAULT_MAX_ROWS})",
)
@argument(
    "--api",
    metavar="API",
    help="the provider's API, for openai: chat (Chat Completions, default) or responses "
    "('none': the provider's default)",
)
@argument("--reset", action="store_true", help="forget every setting (back to the defaults)")
@argument("-h", "--help", action="store_true", help="show this help")
def config_spec(line: str = "") -> None:
    """Show (no options) or change the notebook's defaults for ``%%stream`` and ``Chat``.

    ::

        %stream config                                  show every setting
        %stream config --provider openai:gpt-4o-mini -t 0.3
        %stream config --store sqlite                   keep sessions across restarts
        %stream config --reset                          back to the defaults
    """


_PIPELINE_HELP = (
    "the Pipeline object in VAR (as in %%%%stream --pipeline VAR): its store, "
    "instead of the notebook's"
)
_SESSION_HELP = "the session (default: the last %%%%stream cell's session)"


@magic_arguments(name="stream sessions")
@argument("--pipeline", type=identifier, metavar="VAR", help=_PIPELINE_HELP)
@argument("-h", "--help", action="store_true", help="show this help")
def sessions_spec(line: str = "") -> None:
    """List the sessions in the store (``%stream config --store``, or a pipeline's)."""


@magic_arguments(name="stream history")
@argument("session", nargs="?", metavar="ID", help=_SESSION_HELP)
@argument("--pipeline", type=identifier, metavar="VAR", help=_PIPELINE_HELP)
@argument("-h", "--help", action="store_true", help="show this help")
def history_spec(line: str = "") -> None:
    """Show the messages of a session."""


@magic_arguments(name="stream reset")
@argument("session", nargs="?", metavar="ID", help=_SESSION_HELP)
@argument("--pipeline", type=identifier, metavar="VAR", help=_PIPELINE_HELP)
@argument("-h", "--help", action="store_true", help="show this help")
def reset_spec(line: str = "") -> None:
    """Forget a session: delete its messages from the store."""


@magic_arguments(name="stream record")
@argument("path", nargs="?", metavar="PATH", help="the cassette file (JSON); 'off' stops")
@argument("-h", "--help", action="store_true", help="show this help")
def record_spec(line: str = "") -> None:
    """Record the calls of the notebook's provider to a cassette file (``off`` stops).

    ::

        %stream record cassettes/trip.json     every call from here on is also written there
        %stream record off                     back to plain calls

    Each call's request (method, URL, JSON body; never a key or a header) and the
    response's bytes as they arrived are written; ``%stream replay PATH`` plays
    them back offline. The mock provider makes no HTTP calls, so it has nothing to
    record.
    """


@magic_arguments(name="stream replay")
@argument("path", nargs="?", metavar="PATH", help="the cassette file; 'off' stops")
@argument(
    "--pace",
    type=float,
    default=0.0,
    metavar="P",
    help="1.0 keeps the recorded timing, 0 (default) sends everything at once",
)
@argument("-h", "--help", action="store_true", help="show this help")
def replay_spec(line: str = "") -> None:
    """Answer the notebook's calls from a cassette, offline (``off`` stops).

    ::

        %stream replay cassettes/trip.json             full speed
        %stream replay cassettes/trip.json --pace 1.0  at the recorded pace
        %stream replay off

    Requests are matched by their content (method, URL, body); one with no
    recording is an error naming the cassette. No key is needed, nothing is sent.
    """


@dataclass(frozen=True)
class CellOptions:
    """A parsed ``%%stream`` line."""

    session: str | None = None
    provider: str | None = None
    config: ProviderConfig | None = None
    timeout: Any = UNSET
    idle_timeout: Any = UNSET
    format: str = "markdown"
    lang: str | None = None
    out: str | None = None
    no_history: bool = False
    raw: bool = False
    pipeline: str | None = None
    live: str = "auto"
    tools: tuple[str, ...] = ()
    max_tool_rounds: int | None = None
    approve: bool = False
    schema: str | None = None
    attach: tuple[str, ...] = ()
    dry_run: bool = False
    help: bool = False
    models: tuple[str, ...] = ()  # two or more -m values: compare them (compare_view.py)

    @property
    def session_id(self) -> str | None:
        """The session this turn belongs to (None: a one-off call)."""
        return None if self.no_history else self.session


def parse(spec: Any, line: str) -> argparse.Namespace:
    """Parse like a shell (quotes group words and are removed) into a one-line ``UsageError``.

    IPython's own ``parse_argstring`` keeps the quotes (``--system 'Be brief'``
    would send the quotes to the model), so the line is split with ``shlex``.
    """
    try:
        return spec.parser.parse_args(shlex.split(line))
    except UsageError as exc:
        name = "%%stream" if spec is cell_spec else f"%{spec.parser.prog}"
        raise UsageError(f"{exc} (see {name} --help)") from None
    except ValueError as exc:  # unbalanced quotes, from the shell-like splitter
        raise UsageError(f"cannot read the options {line!r}: {exc}") from None


def usage_error(exc: BaseException) -> UsageError:
    """``exc`` as IPython's ``UsageError``: one line, no traceback, no key.

    IPython shows a traceback for every exception except ``UsageError`` itself
    (not even a subclass), so the notebook layer turns a user's mistake or a
    missing service into exactly that class at its boundary (magics, ``Chat()``).
    """
    text = " ".join(redact(str(exc)).split()) or type(exc).__name__
    return UsageError(text)


def known_providers() -> set[str]:
    """The provider names a spec may start with (``openai`` in ``openai:gpt-4o-mini``)."""
    from ..providers.registry import available_providers

    return {spec.name for spec in available_providers()}


def names_provider(value: str) -> bool:
    """True if ``value`` is a provider spec (``NAME:model`` or ``NAME``), not a model name.

    ``llama3.2:3b`` is a model (Ollama's name:tag): ``llama3.2`` names no provider.
    """
    return value.split(":", 1)[0] in known_providers()


def parse_cell_options(line: str) -> CellOptions:
    args = parse(cell_spec, line)
    if args.help:
        return CellOptions(help=True)
    if args.session is not None:
        try:
            check_session_id(args.session)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
    if args.pipeline and args.provider:
        raise UsageError(
            "--pipeline and --provider exclude each other: the pipeline has its own provider"
        )
    if not args.tools and (args.approve or args.max_tool_rounds is not None):
        flag = "--approve" if args.approve else "--max-tool-rounds"
        raise UsageError(f"{flag} goes with --tools NAMES (the functions the model may call)")
    fmt = args.format or ("code" if args.lang else "markdown")
    if args.lang and fmt != "code":
        raise UsageError(f"--lang goes with -f code, not -f {fmt}")
    models = tuple(m.strip() for v in args.model or () for m in v.split(",") if m.strip())
    model = args.model[0] if len(models) == 1 and len(args.model) == 1 else None
    provider = args.provider
    if model is not None and not provider and not args.pipeline and ":" in model:
        # "-m openai:gpt-4o-mini" alone means what it means in a comparison: that
        # provider and model, not a model of that name on the current provider.
        if names_provider(model):
            provider, model = model, None
    config = None
    if any(v is not None for v in (model, args.system, args.temperature, args.max_tokens)):
        try:
            config = ProviderConfig(
                model=model,
                system=args.system,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
            )
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
    return CellOptions(
        session=args.session,
        provider=provider,
        config=config,
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
        format=fmt,
        lang=args.lang,
        out=args.out,
        no_history=args.no_history,
        raw=args.raw,
        pipeline=args.pipeline,
        live=args.live,
        tools=args.tools or (),
        max_tool_rounds=args.max_tool_rounds,
        approve=args.approve,
        schema=args.schema,
        attach=tuple(args.attach or ()),
        dry_run=args.dry_run,
        models=models if len(models) > 1 else (),
    )
