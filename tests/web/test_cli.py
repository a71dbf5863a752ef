"""``pk-notebook serve`` as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from pk_notebook.sessions import SQLiteStore

from .conftest import wait_until_serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pk_notebook.web.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for option in (
        "--provider",
        "--host",
        "--port",
        "--token",
        "--allow-origin",
        "--max-concurrent",
        "--store",
        "--client-system",
        "--write-timeout",
        "--request-timeout",
        "--max-header-bytes",
    ):
        assert option in out
    assert "127.0.0.1" in out


def test_bad_provider_is_a_clear_error() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pk_notebook.web.cli",
            "serve",
            "--provider",
            "nope",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "unknown provider 'nope'" in done.stderr and "Traceback" not in done.stderr


async def test_serve_streams_with_token_and_sqlite_store(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "sessions.sqlite3"
    env = {**os.environ, "PK_NOTEBOOK_TOKEN": "cli-token-1234"}
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled over HTTP
        [
            sys.executable,
            "-m",
            "pk_notebook.web.cli",
            "serve",
            "--provider",
            "mock",
            "--port",
            str(port),
            "--store",
            str(db),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await wait_until_serving(client)
            refused = await client.post("/stream", json={"prompt": "Write a haiku"})
            assert refused.status_code == 401
            response = await client.post(
                "/stream",
                json={"prompt": "Write a haiku", "session": "cli"},
                headers={"Authorization": "Bearer cli-token-1234"},
            )
            assert response.status_code == 200
            result = next(
                json.loads(block.split("data: ", 1)[1])
                for block in response.text.split("\n\n")
                if "\nevent: result\n" in block
            )
            assert result["status"] == "finished" and result["text"]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode in (0, 130), err  # 130: SIGINT, after a graceful shutdown
    assert "Traceback" not in err
    store = SQLiteStore(db)
    try:
        history = await store.load("cli")
    finally:
        await store.aclose()
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].content == result["text"]


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    from pk_notebook.web.cli import build_parser
    from pk_notebook.web.settings import WebSettings

    args = build_parser().parse_args(["serve"])
    defaults = WebSettings()
    assert args.max_concurrent == defaults.max_concurrent
    assert args.max_prompt_chars == defaults.max_prompt_chars
    assert args.max_body_bytes == defaults.max_body_bytes
    assert args.heartbeat == defaults.heartbeat
    assert args.client_system == defaults.client_system
    assert args.write_timeout == defaults.write_timeout
    assert args.read_timeout == defaults.read_timeout
    assert args.request_timeout == defaults.request_timeout
    assert args.max_header_bytes == defaults.max_header_bytes
    assert args.resume_grace == defaults.resume_grace
