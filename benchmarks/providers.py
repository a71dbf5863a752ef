"""Streaming-client benchmarks against the fake server in a separate process.

``python -m benchmarks.providers [--chunks 100000] [--streams 1000]``

What is measured (CPU = this process's ``time.process_time``; the server runs in
its own process so its work is not counted):

* CPU per chunk of a burst of OpenAI-format chunks, for: httpx ``aiter_raw`` with no
  parsing (the floor of any httpx client), httpx-sse + ``json.loads`` (the bar),
  the official openai SDK's ``AsyncStream``, and pk_notebook's ``OpenAIProvider``
  read through the whole ``Pipeline``/``Stream`` (what a user iterates), on its
  default transport (aiohttp, used natively) and on ``transport="httpx"``.
* per-chunk cost at 200k chunks against 25k (it must not grow with length).
* time to first chunk on a warm connection, against raw httpx.
* 1000 concurrent paced streams in one event loop: errors and event-loop lag, on
  each transport (the check is on the default one). Python's garbage collector is
  left at its defaults: a full collection over 1000 streams' objects is part of
  the lag a user would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from pk_notebook import Pipeline, ProviderMiddleware, RetryPolicy
from pk_notebook.providers import OpenAIProvider

MESSAGES = [{"role": "user", "content": "go"}]
#: the whole pipeline may cost at most this share of httpx-sse + json.loads per chunk
#: (issue 12: a provider that parses must still be cheaper than a bare SSE reader)
BAR_SHARE = 0.4
BODY = {"model": "bench", "messages": MESSAGES, "stream": True}


class ServerProcess:
    """The fake server, started with ``python -m pk_notebook.testing``."""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pk_notebook.testing", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        self.url = self.base_url.rsplit("/v1", 1)[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def default(self, **script: Any) -> None:
        httpx.post(f"{self.url}/_fake/default", json=script).raise_for_status()


async def _cpu_per_chunk(run: Callable[[], Awaitable[int]], repeats: int) -> float:
    """Best (lowest) CPU seconds per chunk over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        count = await run()
        best = min(best, (time.process_time() - started) / max(count, 1))
    return best


# --- the clients ---------------------------------------------------------------------


async def raw_httpx(client: httpx.AsyncClient, url: str) -> int:
    """Bytes only: the floor under every httpx-based client (counts newlines as events)."""
    events = 0
    async with client.stream("POST", url, json=BODY) as response:
        async for raw in response.aiter_raw():
            events += raw.count(b"\n\n")
    return events


async def httpx_sse_json(client: httpx.AsyncClient, url: str) -> int:
    from httpx_sse import aconnect_sse

    count = 0
    async with aconnect_sse(client, "POST", url, json=BODY) as source:
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            json.loads(event.data)
            count += 1
    return count


async def openai_sdk(sdk: Any) -> int:
    count = 0
    stream = await sdk.chat.completions.create(model="bench", messages=MESSAGES, stream=True)
    async for _ in stream:
        count += 1
    return count


async def pk_pipeline(pipe: Pipeline) -> int:
    count = 0
    stream = await pipe.execute_stream("user", "go")
    async with stream:
        async for _ in stream:
            count += 1
    return count


# --- the benchmarks --------------------------------------------------------------------


async def burst(
    server: ServerProcess, chunks: int, sdk_chunks: int, repeats: int
) -> dict[str, float]:
    url = server.base_url + "/chat/completions"
    results: dict[str, float] = {}
    provider = OpenAIProvider("bench", base_url=server.base_url)
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), idle_timeout=60
    )
    async with httpx.AsyncClient(timeout=120) as client:
        server.default(repeat=chunks)
        await raw_httpx(client, url)  # warm up the connection and the server's cache
        await pk_pipeline(pipe)
        results["httpx aiter_raw, no parsing"] = await _cpu_per_chunk(
            lambda: raw_httpx(client, url), repeats
        )
        results["httpx-sse + json.loads"] = await _cpu_per_chunk(
            lambda: httpx_sse_json(client, url), repeats
        )
        results["pk_notebook OpenAIProvider + Pipeline"] = await _cpu_per_chunk(
            lambda: pk_pipeline(pipe), repeats
        )
        on_httpx = Pipeline(
            ProviderMiddleware(
                OpenAIProvider("bench", base_url=server.base_url, transport="httpx"),
                retry=RetryPolicy(max_attempts=1),
            ),
            idle_timeout=60,
        )
        await pk_pipeline(on_httpx)
        results["pk_notebook, transport='httpx'"] = await _cpu_per_chunk(
            lambda: pk_pipeline(on_httpx), repeats
        )
        await on_httpx.shutdown()
    try:
        import openai
    except ImportError:
        pass
    else:
        server.default(repeat=sdk_chunks)
        sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench")
        await openai_sdk(sdk)
        results["openai SDK AsyncStream"] = await _cpu_per_chunk(lambda: openai_sdk(sdk), 1)
        await sdk.close()
    await pipe.shutdown()
    return results


async def scaling(server: ServerProcess, repeats: int) -> dict[int, float]:
    provider = OpenAIProvider("bench", base_url=server.base_url)
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), idle_timeout=60
    )
    out = {}
    for chunks in (25_000, 200_000):
        server.default(repeat=chunks)
        await pk_pipeline(pipe)
        out[chunks] = await _cpu_per_chunk(lambda: pk_pipeline(pipe), repeats)
    await pipe.shutdown()
    return out


async def first_chunk(server: ServerProcess, rounds: int) -> tuple[float, float]:
    """Median seconds to the first content chunk on a warm connection: (raw httpx, ours)."""
    server.default(text="Hello there, how are you today?")
    url = server.base_url + "/chat/completions"
    raw_times, ours_times = [], []
    provider = OpenAIProvider("bench", base_url=server.base_url)
    pipe = Pipeline(ProviderMiddleware(provider))
    async with httpx.AsyncClient() as client:
        for _ in range(rounds):
            started = time.perf_counter()
            async with client.stream("POST", url, json=BODY) as response:
                seen = False
                async for raw in response.aiter_raw():  # read to the end: keep the connection
                    if not seen and b'"content":"Hello' in raw:
                        raw_times.append(time.perf_counter() - started)
                        seen = True
            started = time.perf_counter()
            stream = await pipe.execute_stream("user", "go")
            ours_times.append(time.perf_counter() - started)
            await stream.collect()
    await pipe.shutdown()
    # the first rounds open connections; drop them
    return statistics.median(raw_times[5:]), statistics.median(ours_times[5:])


async def concurrent(
    server: ServerProcess, streams: int, ramp: float, transport: str = "aiohttp"
) -> dict[str, float]:
    """``streams`` paced streams (40 events, 50 ms apart), started over ``ramp`` seconds.

    With ``ramp=0`` all start in the same loop iteration, so the first steps of
    every call (request building, connecting) run back to back: that start-up
    burst is reported too, but the check is on a ramp-up, where the lag measures
    the steady state of all streams running together.
    """
    server.default(text=["tok "] * 40, pace=0.05)
    provider = OpenAIProvider("bench", base_url=server.base_url, transport=transport)
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), idle_timeout=30
    )
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    cpu_started = time.process_time()

    async def one(index: int) -> Any:
        if ramp:
            await asyncio.sleep(ramp * index / streams)
        return await pipe.execute("user", f"q{index}")

    outcomes = await asyncio.gather(*(one(i) for i in range(streams)), return_exceptions=True)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    done.set()
    await tick
    await pipe.shutdown()
    errors = sum(1 for o in outcomes if isinstance(o, BaseException))
    lags.sort()
    return {
        "streams": streams,
        "errors": errors,
        "wall_s": wall,
        # CPU is what a busy machine changes least: the lag depends on who else runs
        "cpu_s": cpu,
        "lag_p50_ms": lags[len(lags) // 2] * 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "lag_max_ms": lags[-1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--sdk-chunks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args(argv)
    with ServerProcess() as server:
        cpu = asyncio.run(burst(server, args.chunks, args.sdk_chunks, args.repeats))
        scale = asyncio.run(scaling(server, args.repeats))
        raw_ttfc, ours_ttfc = asyncio.run(first_chunk(server, 105))
        conc = asyncio.run(concurrent(server, args.streams, 0.5))
        conc_httpx = asyncio.run(concurrent(server, args.streams, 0.5, "httpx"))
        burst_start = asyncio.run(concurrent(server, args.streams, 0.0))
    ours = cpu["pk_notebook OpenAIProvider + Pipeline"]
    bar = cpu["httpx-sse + json.loads"]
    print(f"\nCPU per chunk, burst of {args.chunks:,} chunks (openai SDK: {args.sdk_chunks:,})")
    print(f"{'client':<42}{'us/chunk':>10}{'vs ours':>10}")
    for name, value in cpu.items():
        print(f"{name:<42}{value * 1e6:>10.2f}{value / ours:>10.2f}")
    checks = [
        (
            f"pipeline <= {BAR_SHARE}x httpx-sse + json.loads",
            ours <= BAR_SHARE * bar,
            f"{ours / bar:.2f}x of the bar",
        ),
    ]
    if "openai SDK AsyncStream" in cpu:
        sdk = cpu["openai SDK AsyncStream"]
        checks.append(("openai SDK / pipeline >= 4", sdk / ours >= 4, f"{sdk / ours:.1f}x"))
    growth = scale[200_000] / scale[25_000]
    checks.append(
        (
            "per chunk at 200k / at 25k <= 1.2",
            growth <= 1.2,
            f"{scale[25_000] * 1e6:.2f} -> {scale[200_000] * 1e6:.2f} us ({growth:.2f}x)",
        )
    )
    added = (ours_ttfc - raw_ttfc) * 1000
    checks.append(
        (
            "added time to first chunk < 1 ms",
            added < 1.0,
            f"raw {raw_ttfc * 1000:.2f} ms, ours {ours_ttfc * 1000:.2f} ms (+{added:.2f} ms)",
        )
    )
    checks.append(
        (
            f"{conc['streams']} paced streams (0.5 s ramp): 0 errors, p99 lag < 100 ms",
            conc["errors"] == 0 and conc["lag_p99_ms"] < 100,
            f"errors {conc['errors']}, p50 {conc['lag_p50_ms']:.1f} ms, p99 "
            f"{conc['lag_p99_ms']:.1f} ms, max {conc['lag_max_ms']:.1f} ms, "
            f"wall {conc['wall_s']:.2f} s, CPU {conc['cpu_s']:.2f} s",
        )
    )
    print(
        f"(informational) the same {conc_httpx['streams']} paced streams on transport='httpx': "
        f"errors {conc_httpx['errors']}, lag p50 {conc_httpx['lag_p50_ms']:.1f} ms, "
        f"p99 {conc_httpx['lag_p99_ms']:.1f} ms "
        f"({conc_httpx['lag_p99_ms'] / max(conc['lag_p99_ms'], 0.1):.1f}x the default's), "
        f"max {conc_httpx['lag_max_ms']:.1f} ms, CPU {conc_httpx['cpu_s']:.2f} s"
    )
    print(
        f"(informational) {burst_start['streams']} streams started in one loop iteration: "
        f"errors {burst_start['errors']}, lag p50 {burst_start['lag_p50_ms']:.1f} ms, "
        f"p99 {burst_start['lag_p99_ms']:.1f} ms, max {burst_start['lag_max_ms']:.1f} ms"
    )
    print(f"\n{'check':<62}{'ok':<6}measured")
    for name, ok, detail in checks:
        print(f"{name:<62}{'yes' if ok else 'NO':<6}{detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
