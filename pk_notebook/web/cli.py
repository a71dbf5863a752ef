"""``pk-notebook serve``: run a pipeline's web endpoints with uvicorn.

    pk-notebook serve --provider mock --port 8080
    PK_NOTEBOOK_TOKEN=... pk-notebook serve --provider openai:gpt-4o-mini --host 0.0.0.0 \\
        --allow-host llm.example.com --allow-origin https://app.example.com
    pk-notebook serve --provider openai:gpt-4o-mini --tools mypackage.tools:get_weather
"""

from __future__ import annotations

import argparse
import asyncio
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
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request line (off by default: GET /stream URLs hold prompts)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Any:
    token = args.token or os.environ.get("PK_NOTEBOOK_TOKEN") or None
    hosts = list(args.allow_host)
    if "*" in hosts:
        logger.warning(
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
            logger.warning(
                "serving on all interfaces: this server answers to loopback, to this "
                "machine's addresses and to the names %s. Add the names clients use with "
                "--allow-host NAME; never '*', which would let any website a user visits "
                "use the server through DNS rebinding.",
                ", ".join(h for h in hosts if h not in LOOPBACK_HOSTS) or "(none found)",
            )
        else:
            hosts.append(args.host)
    if token is None and args.host not in LOOPBACK_HOSTS:
        logger.warning(
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
    )


async def _serve(args: argparse.Namespace, settings: Any) -> None:
    import uvicorn

    from ..providers import create_provider
    from ..runtime.middleware import ProviderMiddleware
    from ..runtime.pipeline import Pipeline
    from ..sessions.spec import describe_store, open_store
    from .app import create_app
    from .server import server_config
    from .tools import ServerTools, load_tools

    # Imported and described before anything starts: a bad name is a one-line error.
    tools = ServerTools.build(load_tools(args.tools), args.max_tool_rounds)
    if tools.tools:
        logger.info("server tools: %s", ", ".join(sorted(tools.names)))
    store = open_store(args.store)  # the same specs as %stream config --store
    logger.info("sessions: %s", describe_store(args.store))
    pipe = Pipeline(ProviderMiddleware(create_provider(args.provider)), state_store=store)
    try:
        # The lifespan closes the pipeline and the store while the loop still runs:
        # uvicorn re-raises SIGINT/SIGTERM after serving, which may end the process.
        app = create_app(
            pipe,
            settings,
            tools=tools.tools,
            max_tool_rounds=tools.max_tool_rounds,
            close_pipeline=True,
        )
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
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    from ..runtime.errors import ConfigurationError

    try:
        settings = _settings(args)
        asyncio.run(_serve(args, settings))
    except ConfigurationError as exc:
        parser.exit(2, f"pk-notebook: error: {exc}\n")
    except KeyboardInterrupt:
        return 130  # Ctrl-C, after a graceful shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
