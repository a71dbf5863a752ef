"""Load test of several server processes sharing one Redis: resume, sessions, the global cap.

``python -m benchmarks.web_cluster [--processes 4] [--clients 400] [--chunks 100] [--pace 0.02]``

Needs ``redis-server`` (a throwaway one is started on a free port). Starts
``--processes`` server processes (``create_app`` on uvicorn, a paced mock answer of
``--chunks`` chunks, sessions in Redis, ``max_concurrent`` = the number of
clients: the cap is global), each on its own port, as a load balancer would see
them. Then ``--clients`` SSE clients start at once, client ``i`` on process
``i % processes`` and session ``i % (clients / 2)`` (two turns per session, which
the session lock must serialise); every fifth client cuts its connection after
``--cut`` chunks and resumes on the next process with ``Last-Event-ID``. While they
run, a sampler reads ``/healthz`` (the global count of running streams), and once
the cap is reached, ``--probes`` extra requests must all be refused with 503.

Checked, and reported (exit status 1 if any fails):

* every client got every event exactly once, in order, and the whole text
  (0 lost, 0 duplicated chunks), across the reconnection for those that cut;
* every session holds its two turns whole and in order (0 interleaved turns);
* the global count of running streams never exceeded the cap, and the probes
  sent at the cap were all refused (the cap held across processes).

Not part of the test suite: run on demand; figures go to ``benchmarks/RESULTS-web.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from .web import answer, cpu_seconds, pct, run_loop


def serve(chunks: int, pace: float, cap: int, redis_url: str, prefix: str) -> None:
    import uvicorn

    from pk_notebook.providers import MockProvider, Scenario
    from pk_notebook.runtime import Pipeline, ProviderMiddleware
    from pk_notebook.sessions import RedisStore
    from pk_notebook.web import create_app

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    provider = MockProvider([Scenario(answer(chunks))], chunk_delay=pace)
    store = RedisStore.from_url(redis_url, prefix=prefix)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store, idle_timeout=None)
    app = create_app(pipe, close_pipeline=True, max_concurrent=cap, resume_grace=10.0)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, backlog=4096, timeout_graceful_shutdown=2
    )
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def start_redis() -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="cluster-redis-")
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--maxclients", "10000", *options],
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
    raise SystemExit("redis-server did not start")


# --- a minimal SSE client ------------------------------------------------------------------


class Events:
    """What one client saw: (id, event, data) in order, over one or two connections."""

    def __init__(self) -> None:
        self.items: list[tuple[str | None, str, str]] = []

    def chunks(self) -> int:
        return sum(1 for _, event, _ in self.items if event == "chunk")


def _parse(block: bytes) -> tuple[str | None, str, str] | None:
    event_id = None
    event = "message"
    data: list[str] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data: "):
            data.append(line[6:].decode())
        elif line.startswith(b"event: "):
            event = line[7:].decode()
        elif line.startswith(b"id: "):
            event_id = line[4:].decode()
    return (event_id, event, "\n".join(data)) if data else None


async def sse(
    url: str,
    events: Events,
    *,
    body: dict[str, Any] | None = None,
    last_event_id: str | None = None,
    cut_after: int | None = None,
) -> int:
    """One request; returns its HTTP status. Stops reading after ``cut_after`` chunks."""
    host, port = url.removeprefix("http://").split(":")
    if body is not None:
        payload = json.dumps(body).encode()
        head = (
            f"POST /stream HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
    else:
        payload = b""
        head = (
            f"GET /stream HTTP/1.1\r\nHost: {host}:{port}\r\nLast-Event-ID: {last_event_id}\r\n"
            "Connection: close\r\n\r\n"
        )
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    try:
        writer.write(head.encode() + payload)
        status_line = await reader.readuntil(b"\r\n\r\n")
        status = int(status_line.split(b" ", 2)[1])
        if status != 200:
            return status
        buffer = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                return status
            buffer += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                item = _parse(block)
                if item is None:
                    continue
                events.items.append(item)
                if cut_after is not None and events.chunks() >= cut_after:
                    return status
    finally:
        writer.close()


def check(events: Events, expected: str) -> str | None:
    """None if the client got the whole answer, each event once and in order."""
    items = events.items
    if not items or items[-1][2] != "[DONE]":
        return "no [DONE] at the end"
    seqs = [int(i.rsplit(":", 1)[1]) for i, _, _ in items if i]
    if seqs != list(range(1, len(seqs) + 1)):
        return "events lost or repeated"
    chunks = [json.loads(d) for _, e, d in items if e == "chunk"]
    if [c["index"] for c in chunks] != list(range(len(chunks))):
        return "chunks lost or repeated"
    if "".join(c["content"] for c in chunks) != expected:
        return "wrong text"
    results = [json.loads(d) for _, e, d in items if e == "result"]
    if len(results) != 1 or results[0]["status"] != "finished":
        return f"result: {results[0]['status'] if results else 'missing'}"
    return None


# --- the run -------------------------------------------------------------------------------


async def run(
    urls: list[str], args: argparse.Namespace, redis_url: str, prefix: str
) -> dict[str, Any]:
    import httpx

    expected = answer(args.chunks)
    sessions = max(1, args.clients // 2)
    errors: list[str] = []
    peak = {"global": 0, "sum_local": 0, "probes": 0, "refused": 0}
    at_cap = asyncio.Event()
    reconnected = 0
    durations: list[float] = []

    async def client(i: int) -> None:
        nonlocal reconnected
        n = len(urls)
        events = Events()
        started = time.perf_counter()
        body = {"prompt": "load", "session": f"s{i % sessions}"}
        cut = args.cut if i % 5 == 0 else None
        try:
            status = await sse(urls[i % n], events, body=body, cut_after=cut)
            if status != 200:
                errors.append(f"client {i}: HTTP {status}")
                return
            if cut is not None:
                reconnected += 1
                last = next(i for i, _, _ in reversed(events.items) if i)
                status = await sse(urls[(i + 1) % n], events, last_event_id=last)
                if status != 200:
                    errors.append(f"client {i}: resume HTTP {status}")
                    return
        except Exception as exc:
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            return
        durations.append(time.perf_counter() - started)
        problem = check(events, expected)
        if problem:
            errors.append(f"client {i}: {problem}")

    async def sampler(client: httpx.AsyncClient) -> None:
        while True:
            replies = await asyncio.gather(*(client.get(u + "/healthz") for u in urls))
            data = [r.json() for r in replies]
            counts = [d["streams_all_processes"] or 0 for d in data]
            peak["global"] = max(peak["global"], *counts)
            peak["sum_local"] = max(peak["sum_local"], sum(d["streams"] for d in data))
            if max(counts) >= args.clients:
                at_cap.set()
            await asyncio.sleep(0.05)

    async def probe(client: httpx.AsyncClient) -> None:
        try:
            await asyncio.wait_for(at_cap.wait(), 30)
        except asyncio.TimeoutError:
            errors.append("the cap was never reached: probes not sent")
            return
        replies = await asyncio.gather(
            *(
                client.post(urls[k % len(urls)] + "/stream", json={"prompt": "probe"})
                for k in range(args.probes)
            )
        )
        peak["probes"] = len(replies)
        peak["refused"] = sum(r.status_code == 503 for r in replies)

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as side:
        watching = asyncio.ensure_future(sampler(side))
        probing = asyncio.ensure_future(probe(side))
        wall0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(args.clients)))
        wall = time.perf_counter() - wall0
        await probing
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    # Sessions: two whole turns each, in order (the session lock serialised them).
    from pk_notebook.sessions import RedisStore

    store = RedisStore.from_url(redis_url, prefix=prefix)
    interleaved = 0
    try:
        for s in range(sessions):
            history = await store.load(f"s{s}")
            roles = [m.role for m in history]
            whole = all(m.content == expected for m in history if m.role == "assistant")
            if roles != ["user", "assistant"] * 2 or not whole:
                interleaved += 1
    finally:
        await store.aclose()
    return {
        "errors": errors,
        "wall": wall,
        "reconnected": reconnected,
        "interleaved": interleaved,
        "peak": peak,
        "durations": durations,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web_cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--chunks", type=int, default=100, help="chunks per answer")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between chunks")
    parser.add_argument("--cut", type=int, default=30, help="chunks before a fifth reconnect")
    parser.add_argument("--probes", type=int, default=20, help="requests sent at the cap")
    parser.add_argument("--serve", nargs=2, metavar=("REDIS", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.chunks, args.pace, args.clients, *args.serve)
        return 0

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients * 4 + 500
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    redis_url, redis_process = start_redis()
    prefix = f"cluster-{uuid.uuid4().hex[:6]}:"
    servers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(args.processes):
            servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.web_cluster",
                        "--serve",
                        redis_url,
                        prefix,
                        "--chunks",
                        str(args.chunks),
                        "--pace",
                        str(args.pace),
                        "--clients",
                        str(args.clients),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
        urls = [s.stdout.readline().strip() for s in servers if s.stdout is not None]
        if not all(urls):
            print("a server did not start", file=sys.stderr)
            return 1
        time.sleep(0.5)
        cpu0 = [cpu_seconds(s.pid) for s in servers]
        redis_cpu0 = cpu_seconds(redis_process.pid)
        out = run_loop(run(urls, args, redis_url, prefix))
        server_cpu = sum(cpu_seconds(s.pid) - c for s, c in zip(servers, cpu0, strict=True))
        redis_cpu = cpu_seconds(redis_process.pid) - redis_cpu0
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(15)
        redis_process.terminate()
        redis_process.wait(10)
    errors = out["errors"]
    peak = out["peak"]
    chunks = args.clients * args.chunks
    ideal = args.chunks * args.pace
    print(
        f"cluster load test: {args.processes} processes, {args.clients} SSE clients x "
        f"{args.chunks} chunks {args.pace * 1000:g} ms apart, two turns per session, "
        f"{out['reconnected']} clients reconnected to another process after {args.cut} chunks"
    )
    print(f"  wall {out['wall']:.2f} s (two serialised turns per session: ideal {2 * ideal:.2f} s)")
    print(
        f"  client time (incl. waiting for the session): p50 {pct(out['durations'], 0.5):.2f} s, "
        f"p99 {pct(out['durations'], 0.99):.2f} s"
    )
    print(
        f"  server CPU {server_cpu / chunks * 1e6:.1f} us/chunk (all processes), "
        f"redis-server {redis_cpu / chunks * 1e6:.1f} us/chunk"
    )
    print(
        f"  lost, duplicated or wrong: {len(errors)} clients"
        + (f"  first: {errors[0]}" if errors else "")
    )
    print(f"  interleaved turns: {out['interleaved']} of {max(1, args.clients // 2)} sessions")
    print(
        f"  global cap {args.clients}: peak {peak['global']} running (sum of the processes' own "
        f"counts: peak {peak['sum_local']}); at the cap {peak['refused']} of {peak['probes']} "
        "extra requests refused with 503"
    )
    held = peak["global"] <= args.clients and peak["refused"] == peak["probes"] == args.probes
    ok = not errors and out["interleaved"] == 0 and held
    print("  OK" if ok else "  FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
