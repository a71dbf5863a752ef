"""Turns per second through a Pipeline, per session store: memory, SQLite, Redis.

    python -m benchmarks.sessions [--turns 500] [--concurrency 20] [--redis-url redis://...]

The provider is the mock with no delays, so what is measured is the pipeline
plus the store: take the session lock, load the history, stream the answer,
append the turn, release the lock. "sequential" runs one turn at a time;
"concurrent" runs ``--concurrency`` turns at once spread over ``--sessions``
sessions (turns on one session queue on its lock). Without ``--redis-url`` (or
``PK_NOTEBOOK_REDIS_URL``) a throwaway redis-server is started on a free
loopback port, if one is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pk_notebook.providers import MockProvider
from pk_notebook.runtime import Pipeline, ProviderMiddleware, StateStore
from pk_notebook.sessions import MemoryStore, SQLiteStore

ANSWER = "A short answer of about a dozen tokens, enough to stream a few chunks."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    return None


async def _run(
    store: StateStore, turns: int, concurrency: int, sessions: int
) -> tuple[float, float]:
    """(turns per second, median milliseconds per turn)."""
    provider = MockProvider(default=ANSWER)
    durations: list[float] = []
    queue = list(range(turns))
    async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:

        async def worker() -> None:
            while queue:
                turn = queue.pop()
                started = time.perf_counter()
                result = await pipe.execute_with_context(f"bench-{turn % sessions}", "user", "hi")
                durations.append(time.perf_counter() - started)
                if result.warnings:
                    raise RuntimeError(f"a turn was not saved: {result.warnings}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return turns / elapsed, statistics.median(durations) * 1000


async def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sessions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--redis-url", default=os.environ.get("PK_NOTEBOOK_REDIS_URL"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pk_bench_") as tmp:
        work = Path(tmp)
        server = None
        redis_url = args.redis_url
        if redis_url is None:
            server = _start_redis(work)
            redis_url = server[1] if server else None
        try:
            makers: dict[str, Callable[[], StateStore]] = {
                "memory": MemoryStore,
                "sqlite": lambda: SQLiteStore(work / f"{uuid.uuid4().hex}.sqlite3"),
            }
            if redis_url is not None:
                from pk_notebook.sessions import RedisStore

                makers["redis"] = lambda: RedisStore.from_url(
                    redis_url, prefix=f"pk_bench:{uuid.uuid4().hex[:8]}:"
                )
            else:
                print("redis: skipped (no redis-server installed and no --redis-url)")

            print(
                f"{args.turns} turns, zero-delay mock provider; concurrent = "
                f"{args.concurrency} at once over {args.sessions} sessions\n"
            )
            print(f"{'store':<8} {'sequential':>16} {'concurrent':>16} {'median turn':>12}")
            for name, make in makers.items():
                row = []
                median = 0.0
                for concurrency in (1, args.concurrency):
                    store = make()
                    try:
                        await _run(
                            store, min(50, args.turns), concurrency, args.sessions
                        )  # warm-up
                        rate, median_ms = await _run(store, args.turns, concurrency, args.sessions)
                    finally:
                        await store.aclose()
                    row.append(rate)
                    if concurrency == 1:
                        median = median_ms
                print(f"{name:<8} {row[0]:>10.0f} turn/s {row[1]:>10.0f} turn/s {median:>9.2f} ms")
        finally:
            if server is not None:
                server[0].terminate()
                server[0].wait(timeout=10)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point, also for ``python -m benchmarks`` (which calls ``main()`` of each suite)."""
    return asyncio.run(_main(argv))


if __name__ == "__main__":
    sys.exit(main())
