"""Load test of the web endpoints: many concurrent SSE clients on loopback.

``python -m benchmarks.web [--clients 500] [--chunks 100] [--pace 0.01] [--quick]``

The server (``create_app`` on uvicorn, a paced MockProvider) runs in its own
process; this process runs the clients (httpx + httpx-sse). Reported:

* errors (must be 0) and whether every client got exactly the pipeline's text;
* time to first chunk and total time per stream (p50 / p99);
* the server process's CPU per delivered chunk (from ``/proc``), against the CPU
  per chunk of the same streams read from the pipeline directly (same provider,
  same concurrency, same event loop kind): the difference is what the web layer
  (framing, ASGI, HTTP, sockets) adds per chunk.

The server runs twice: with answers buffered in its memory only (one process),
then, when ``redis-server`` is installed (or ``--redis URL`` is given), with the
sessions in Redis, so every answer's events are also written to a Redis Stream
in batches (what several processes need for resume). Both are reported against
the pipeline alone, and the Redis server's own CPU per chunk is shown apart.
``--redis off`` skips the second run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

ANSWER_WORD = "tok{}"


def answer(chunks: int) -> str:
    # Each word is one mock token, so the answer is exactly ``chunks`` chunks.
    return " ".join(ANSWER_WORD.format(i) for i in range(chunks))


def make_pipeline(chunks: int, pace: float) -> Any:
    from pk_notebook.providers import MockProvider, Scenario
    from pk_notebook.runtime import Pipeline, ProviderMiddleware

    provider = MockProvider([Scenario(answer(chunks))], chunk_delay=pace)
    return Pipeline(ProviderMiddleware(provider), idle_timeout=None)


def run_loop(main: Any) -> Any:
    """Run ``main`` on uvloop when installed (what uvicorn uses), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_kind() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# --- the server process ------------------------------------------------------------------


def serve(chunks: int, pace: float, max_concurrent: int, redis_url: str | None = None) -> None:
    import uvicorn

    from pk_notebook.web import create_app

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    pipe = make_pipeline(chunks, pace)
    if redis_url:
        from pk_notebook.sessions import RedisStore

        # Sessions in Redis: the app writes every answer's events to a Redis Stream too.
        pipe.state_store = RedisStore.from_url(redis_url, prefix="bench:")
    app = create_app(pipe, close_pipeline=True, max_concurrent=max_concurrent, heartbeat=15.0)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, backlog=4096, timeout_graceful_shutdown=2
    )
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- the measurements --------------------------------------------------------------------


async def direct(clients: int, chunks: int, pace: float) -> dict[str, float]:
    """The same streams read from the pipeline in-process: the baseline."""
    pipe = make_pipeline(chunks, pace)
    expected = answer(chunks)

    async def one() -> int:
        stream = await pipe.execute_stream("user", "bench")
        count = 0
        async with stream:
            async for chunk in stream:
                count += not chunk.final
        assert stream.text == expected
        return count

    await asyncio.gather(*(one() for _ in range(10)))  # warm-up
    cpu0, wall0 = time.process_time(), time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(clients)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await pipe.shutdown()
    total = sum(counts)
    return {"chunks": total, "cpu_per_chunk_us": cpu / total * 1e6, "wall": wall}


class _Tally:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.ttfc: list[float] = []
        self.totals: list[float] = []
        self.delivered = 0

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


def _events(block: bytes) -> tuple[str | None, str | None]:
    """(event, data) of one SSE block; (None, None) for a comment-only block."""
    event = None
    data: list[str] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data: "):
            data.append(line[6:].decode())
        elif line.startswith(b"event: "):
            event = line[7:].decode()
    return (event or "message", "\n".join(data)) if data else (None, None)


async def raw_stream(host: str, port: int, tally: _Tally, expected: str) -> None:
    """One SSE client on a bare asyncio connection (HTTP/1.1, chunked): the cheapest
    honest client, so that the server and not the client is what gets measured."""
    body = b'{"prompt": "bench"}'
    request = (
        f"POST /stream HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    parts: list[str] = []
    result: dict[str, Any] | None = None
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200 or b"transfer-encoding: chunked" not in head.lower():
            tally.errors.append(f"HTTP {status}")
            return
        buffer = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            buffer += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                event, data = _events(block)
                if event == "chunk":
                    if not parts:
                        tally.ttfc.append(time.perf_counter() - started)
                    parts.append(json.loads(data)["content"])  # type: ignore[arg-type]
                elif event == "result":
                    result = json.loads(data)  # type: ignore[arg-type]
                elif event == "error":
                    tally.errors.append(str(data))
    except Exception as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    finally:
        writer.close()
    tally.totals.append(time.perf_counter() - started)
    tally.delivered += len(parts)
    if "".join(parts) != expected or result is None or result["status"] != "finished":
        tally.errors.append("wrong text or status")


async def httpx_stream(client: Any, tally: _Tally, expected: str) -> None:
    """One SSE client with httpx + httpx-sse (what applications typically use)."""
    from httpx_sse import aconnect_sse

    started = time.perf_counter()
    parts: list[str] = []
    result: dict[str, Any] | None = None
    try:
        async with aconnect_sse(client, "POST", "/stream", json={"prompt": "bench"}) as src:
            if src.response.status_code != 200:
                tally.errors.append(f"HTTP {src.response.status_code}")
                return
            async for sse in src.aiter_sse():
                if sse.event == "chunk":
                    if not parts:
                        tally.ttfc.append(time.perf_counter() - started)
                    parts.append(json.loads(sse.data)["content"])
                elif sse.event == "result":
                    result = json.loads(sse.data)
                elif sse.event == "error":
                    tally.errors.append(sse.data)
    except Exception as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    tally.totals.append(time.perf_counter() - started)
    tally.delivered += len(parts)
    if "".join(parts) != expected or result is None or result["status"] != "finished":
        tally.errors.append("wrong text or status")


async def through_server(url: str, clients: int, chunks: int, kind: str) -> dict[str, Any]:
    import httpx

    expected = answer(chunks)
    host, port = url.removeprefix("http://").split(":")
    tally = _Tally()
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    # The warm-up gets its own client: a pooled keep-alive connection reused after
    # uvicorn's keep-alive timeout would fail on the client side, not the server's.
    for measured in (False, True):
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

            def one(client: Any = client) -> Any:
                if kind == "httpx":
                    return httpx_stream(client, tally, expected)
                return raw_stream(host, int(port), tally, expected)

            if not measured:
                await asyncio.gather(*(one() for _ in range(10)))
                tally.clear()
                continue
            wall0 = time.perf_counter()
            cpu0 = time.process_time()
            await asyncio.gather(*(one() for _ in range(clients)))
            wall = time.perf_counter() - wall0
            client_cpu = time.process_time() - cpu0
    return {
        "errors": tally.errors,
        "chunks": tally.delivered,
        "wall": wall,
        "client_cpu_per_chunk_us": client_cpu / max(tally.delivered, 1) * 1e6,
        "ttfc": tally.ttfc,
        "totals": tally.totals,
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=100, help="chunks per answer")
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--quick", action="store_true", help="50 clients, for a smoke run")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: a minimal asyncio SSE client (measures the server); httpx: httpx-sse",
    )
    parser.add_argument(
        "--redis",
        default="auto",
        help="a second run with answers buffered in Redis: auto (start a throwaway "
        "redis-server if installed), off, or a redis:// URL (default: %(default)s)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-redis", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients = 50
    if args.serve:
        serve(args.chunks, args.pace, args.clients + 20, args.serve_redis)
        return 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients * 2 + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    print(
        f"web load test: {args.clients} concurrent SSE clients x {args.chunks} chunks, "
        f"{args.pace * 1000:g} ms apart, loopback, {loop_kind()}"
    )
    base = run_loop(direct(args.clients, args.chunks, args.pace))
    print(
        f"  pipeline directly : {base['cpu_per_chunk_us']:7.1f} us CPU/chunk  "
        f"({base['chunks']} chunks in {base['wall']:.2f} s)"
    )

    failed = False
    runs: list[tuple[str, str | None, int | None]] = [("memory", None, None)]
    redis_process: subprocess.Popen[bytes] | None = None
    if args.redis != "off":
        url, redis_process = start_redis(args.redis)
        if url is None:
            print("  (no redis-server: the Redis run is skipped)")
        else:
            runs.append(("redis", url, redis_process.pid if redis_process else None))
    try:
        for label, url, redis_pid in runs:
            failed |= measure(args, base, label, url, redis_pid)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
    return 1 if failed else 0


def start_redis(spec: str) -> tuple[str | None, subprocess.Popen[bytes] | None]:
    """(URL, process we started) for ``--redis``: auto starts a throwaway server."""
    if spec != "auto":
        return spec, None
    import shutil
    import tempfile

    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", process
        except OSError:
            time.sleep(0.05)
    process.terminate()
    return None, None


def measure(
    args: argparse.Namespace,
    base: dict[str, float],
    label: str,
    redis_url: str | None,
    redis_pid: int | None,
) -> bool:
    """One run through the server; True if it failed."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.web",
        "--serve",
        "--chunks",
        str(args.chunks),
        "--pace",
        str(args.pace),
        "--clients",
        str(args.clients),
    ]
    if redis_url:
        command += ["--serve-redis", redis_url]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url:
            print("the server did not start", file=sys.stderr)
            return True
        time.sleep(0.3)
        cpu_before = cpu_seconds(server.pid)
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        measured = run_loop(through_server(url, args.clients, args.chunks, args.client))
        server_cpu = cpu_seconds(server.pid) - cpu_before
        redis_cpu = (cpu_seconds(redis_pid) - redis_before) if redis_pid else None
    finally:
        server.terminate()
        server.wait(15)
    chunks = max(measured["chunks"], 1)
    per_chunk = server_cpu / chunks * 1e6
    errors = measured["errors"]
    print(f"  [{label}] answers buffered in {'memory and Redis' if redis_url else 'memory'}")
    print(
        f"  through the server: {per_chunk:7.1f} us server CPU/chunk "
        f"({measured['chunks']} chunks in {measured['wall']:.2f} s, "
        f"{measured['chunks'] / measured['wall']:,.0f} chunks/s)"
    )
    print(
        f"  added by the web layer: {per_chunk - base['cpu_per_chunk_us']:.1f} us CPU per chunk "
        f"(x{per_chunk / base['cpu_per_chunk_us']:.1f} the pipeline alone)"
    )
    if redis_cpu is not None:
        print(f"  redis-server itself : {redis_cpu / chunks * 1e6:7.1f} us CPU/chunk")
    print(
        f"  client ({args.client:5})     : {measured['client_cpu_per_chunk_us']:7.1f} us CPU/chunk"
    )
    ideal = args.chunks * args.pace
    print(
        f"  time to first chunk: p50 {pct(measured['ttfc'], 0.5) * 1000:.1f} ms, "
        f"p99 {pct(measured['ttfc'], 0.99) * 1000:.1f} ms"
    )
    print(
        f"  stream duration    : p50 {pct(measured['totals'], 0.5):.2f} s, "
        f"p99 {pct(measured['totals'], 0.99):.2f} s (paced ideal {ideal:.2f} s)"
    )
    print(f"  errors: {len(errors)}" + (f"  first: {errors[0]}" if errors else ""))
    return bool(errors)


if __name__ == "__main__":
    sys.exit(main())
