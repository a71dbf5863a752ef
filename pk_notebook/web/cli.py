"""``pk-notebook serve``: run a pipeline's web endpoints with uvicorn.

    pk-notebook serve --provider mock --port 8080
    PK_NOTEBOOK_TOKEN=... pk-notebook serve --provider openai:gpt-4o-mini --host 0.0.0.0 \\
        --allow-host llm.example.com --allow-origin https://app.example.com
    pk-notebook serve --provider openai:gpt-4o-mini --tools mypackage.tools:get_weather
    pk-notebook serve --provider openai:gpt-4o-mini --workers 4 --store redis://localhost:6379/0

Several processes (``--workers N``, uvicorn's workers on one port) need the Redis
store: sessions, session locks, the stream cap, stop and resume then work across
them (see :mod:`pk_notebook.web.replay`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .settings import LOOPBACK_HOSTS, WebSettings

# The server's defaults live on WebSettings; the command line shows and uses the same.
DEFAULTS = WebSettings()

logger = logging.getLogger("pk_notebook")

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pk-notebook",
        description="Stream LLM answers: serve a pipeline over SSE, WebSocket and an "
        "OpenAI-compatible API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the web endpoints (/stream, /ws, /v1/chat/completions, demo page at /)",
        description="Serve a pipeline with uvicorn. Defaults are safe for a local server: "
        "loopback only, no cross-site origins, bounded streams and request sizes.",
    )
    serve.add_argument(
        "--provider",
        default=os.environ.get("PK_NOTEBOOK_PROVIDER", "mock"),
        help="provider spec, e.g. mock or openai:gpt-4o-mini (default: %(default)s)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s; 0.0.0.0 exposes it to the network)",
    )
    serve.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    serve.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' (prefer the PK_NOTEBOOK_TOKEN "
        "environment variable: command lines are visible to other users)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to use the endpoints, e.g. "
        "https://app.example.com or http://localhost:* (repeatable; "
        "default: loopback origins only)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a Host name the server answers to (repeatable; default: loopback names and "
        "--host, or with --host 0.0.0.0 this machine's names and addresses). '*' accepts "
        "any, which lets any website you visit use the server through DNS rebinding",
    )
    serve.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULTS.max_concurrent,
        help="streams running at once; more get HTTP 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-prompt-chars",
        type=int,
        default=DEFAULTS.max_prompt_chars,
        help="longest accepted prompt (default: %(default)s)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULTS.max_body_bytes,
        help="largest accepted request body (default: %(default)s)",
    )
    serve.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULTS.heartbeat,
        help="seconds between SSE keep-alive comments (default: %(default)s)",
    )
    serve.add_argument(
        "--client-system",
        choices=["refuse", "allow"],
        default=DEFAULTS.client_system,
        help="whether clients may send their own system prompt (/stream options.system, "
        "/v1 system and developer messages); refused so no client can replace the "
        "operator's (default: %(default)s)",
    )
    serve.add_argument(
        "--write-timeout",
        type=float,
        default=DEFAULTS.write_timeout,
        help="seconds a write may wait for a client that does not read; then its stream "
        "is stopped and its slot freed (default: %(default)s)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULTS.read_timeout,
        help="seconds to wait for each piece of a request body (default: %(default)s)",
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULTS.request_timeout,
        help="seconds a connection has to send a complete request, headers and body; "
        "then it is closed (default: %(default)s)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULTS.max_header_bytes,
        help="largest accepted request header block (default: %(default)s)",
    )
    serve.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION,...",
        help="the server's tools: Python functions every turn may call, run by the server "
        "(comma-separated, repeatable; clients cannot choose them)",
    )
    serve.add_argument(
        "--max-tool-rounds",
        type=int,
        default=None,
        help="rounds of tool calls in one turn before the model must answer (default: "
        "the pipeline's, 8)",
    )
    serve.add_argument(
        "--store",
        default="memory",
        help="session store, as in %%stream config --store: memory, sqlite (the default "
        "file), sqlite:PATH, PATH.sqlite3 or redis://host:port/db (default: %(default)s)",
    )
    serve.add_argument(
        "--resume-grace",
        type=float,
        default=DEFAULTS.resume_grace,
        help="seconds a /stream answer keeps generating with no client attached, so a "
        "client that reconnects (Last-Event-ID) reads on; then it is stopped and saved as "
        "interrupted. 0: a client leaving stops its answer (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port (uvicorn workers); more than 1 needs "
        "--store redis://..., which shares sessions, the stream cap, stop and resume "
        "between them (default: %(default)s)",
    )
    serve.add_argument(
        "--stream-lease",
        type=float,
        default=DEFAULTS.stream_lease,
        help="with --store redis://...: seconds a slot of the global stream cap outlives a "
        "process that crashed (each running stream renews its lease every third of it) "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request line (off by default: GET /stream URLs hold prompts)",
    )
    return parser


def _settings(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    warn = logger.debug if quiet else logger.warning
    token = args.token or os.environ.get("PK_NOTEBOOK_TOKEN") or None
    hosts = list(args.allow_host)
    if "*" in hosts:
        warn(
            "--allow-host '*' switches off the DNS-rebinding guard: any website opened in "
            "a browser that can reach this server can use it (and spend its provider's "
            "quota). List the names clients use instead."
        )
    elif not hosts:
        hosts = [*LOOPBACK_HOSTS]
        if args.host in _WILDCARD_HOSTS:
            # Not '*': then any page a user visits could point a name it controls at this
            # machine (DNS rebinding) and use the server from the user's browser.
            from .server import machine_hosts

            hosts += machine_hosts()
            warn(
                "serving on all interfaces: this server answers to loopback, to this "
                "machine's addresses and to the names %s. Add the names clients use with "
                "--allow-host NAME; never '*', which would let any website a user visits "
                "use the server through DNS rebinding.",
                ", ".join(h for h in hosts if h not in LOOPBACK_HOSTS) or "(none found)",
            )
        else:
            hosts.append(args.host)
    if token is None and args.host not in LOOPBACK_HOSTS:
        warn(
            "serving beyond loopback without a token: anyone who can reach port %d can "
            "spend this provider's quota. Set PK_NOTEBOOK_TOKEN.",
            args.port,
        )
    return WebSettings(
        token=token,
        allowed_origins=tuple(args.allow_origin) or None,
        allowed_hosts=tuple(hosts),
        max_concurrent=args.max_concurrent,
        max_prompt_chars=args.max_prompt_chars,
        max_body_bytes=args.max_body_bytes,
        heartbeat=args.heartbeat if args.heartbeat > 0 else None,
        client_system=args.client_system,
        write_timeout=args.write_timeout,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
        max_header_bytes=args.max_header_bytes,
        resume_grace=args.resume_grace,
        stream_lease=args.stream_lease,
    )


def _build_app(args: argparse.Namespace, settings: Any, *, quiet: bool = False) -> tuple[Any, Any]:
    """The app and its pipeline (provider, store, tools), as one process serves them."""
    from ..providers import create_provider
    from ..runtime.middleware import ProviderMiddleware
    from ..runtime.pipeline import Pipeline
    from ..sessions.spec import describe_store, open_store
    from .app import create_app
    from .tools import ServerTools, load_tools

    # Imported and described before anything starts: a bad name is a one-line error.
    tools = ServerTools.build(load_tools(args.tools), args.max_tool_rounds)
    if tools.tools and not quiet:
        logger.info("server tools: %s", ", ".join(sorted(tools.names)))
    store = open_store(args.store)  # the same specs as %stream config --store
    if not quiet:
        logger.info("sessions: %s", describe_store(args.store))
    pipe = Pipeline(ProviderMiddleware(create_provider(args.provider)), state_store=store)
    # The lifespan closes the pipeline and the store while the loop still runs:
    # uvicorn re-raises SIGINT/SIGTERM after serving, which may end the process.
    app = create_app(
        pipe,
        settings,
        tools=tools.tools,
        max_tool_rounds=tools.max_tool_rounds,
        close_pipeline=True,
    )
    return app, pipe


async def _serve(args: argparse.Namespace, settings: Any) -> None:
    import uvicorn

    from .server import server_config

    app, pipe = _build_app(args, settings)
    try:
        config = server_config(
            app,
            settings,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
        )
        await uvicorn.Server(config).serve()
    finally:
        await pipe.shutdown()
        await pipe.state_store.aclose()


#: how ``--workers`` hands the parsed command line to each worker process
_WORKER_ARGS = "PK_NOTEBOOK_SERVE_ARGS"


def worker_app() -> Any:
    """The app of one ``--workers`` process (a uvicorn factory; reads its options from
    the environment the parent set)."""
    from .server import BoundedH11Protocol, BoundedWebSocketProtocol

    args = argparse.Namespace(**json.loads(os.environ[_WORKER_ARGS]))
    logging.getLogger("pk_notebook").setLevel(args.log_level.upper())
    settings = _settings(args, quiet=True)
    # uvicorn builds these protocols by name in each worker: set their bounds here.
    BoundedH11Protocol.request_timeout = settings.request_timeout
    BoundedH11Protocol.write_timeout = settings.write_timeout
    BoundedWebSocketProtocol.write_timeout = settings.write_timeout
    return _build_app(args, settings, quiet=True)[0]


def _serve_workers(args: argparse.Namespace, settings: Any) -> None:
    import uvicorn

    from ..sessions.spec import describe_store, parse_store_spec

    if parse_store_spec(args.store).kind != "redis":
        from ..runtime.errors import ConfigurationError

        raise ConfigurationError(
            f"--workers {args.workers} needs --store redis://...: several processes share "
            "sessions, the stream cap, stop and resume through Redis"
        )
    _build_app(args, settings)  # a bad provider or tool is a one-line error, here, once
    logger.info("sessions: %s; %d worker processes", describe_store(args.store), args.workers)
    values = {**vars(args), "token": None}
    os.environ[_WORKER_ARGS] = json.dumps(values)
    if settings.token:
        os.environ["PK_NOTEBOOK_TOKEN"] = settings.token  # not on a command line
    uvicorn.run(
        "pk_notebook.web.cli:worker_app",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="on",
        http="pk_notebook.web.server:BoundedH11Protocol",
        ws="pk_notebook.web.server:BoundedWebSocketProtocol",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ws_max_size=settings.max_body_bytes + 1024,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    from ..runtime.errors import ConfigurationError

    try:
        if args.workers < 1:
            raise ConfigurationError("--workers must be 1 or more")
        settings = _settings(args)
        if args.workers > 1:
            _serve_workers(args, settings)
        else:
            asyncio.run(_serve(args, settings))
    except ConfigurationError as exc:
        parser.exit(2, f"pk-notebook: error: {exc}\n")
    except KeyboardInterrupt:
        return 130  # Ctrl-C, after a graceful shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
