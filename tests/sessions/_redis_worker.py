"""One process of the multi-process Redis test: ``python -m tests.sessions._redis_worker``.

Runs ``turns`` turns (``tasks`` at a time) on ``sessions`` shared sessions and
prints one JSON line per turn: the session, the prompt, and how many messages of
history the turn was given (which proves what it saw when it held the lock).
"""

from __future__ import annotations

import asyncio
import json
import sys

from pk_notebook.providers import MockProvider
from pk_notebook.runtime import Pipeline, ProviderMiddleware
from pk_notebook.sessions import RedisStore


async def main(url: str, prefix: str, worker: int, turns: int, sessions: int, tasks: int) -> None:
    store = RedisStore.from_url(url, prefix=prefix)
    provider = MockProvider(default="A: {prompt} and some more words to stream")
    lines: list[str] = []
    queue = list(range(turns))

    async with Pipeline(ProviderMiddleware(provider), state_store=store, lock_timeout=60) as pipe:

        async def run() -> None:
            while queue:
                turn = queue.pop(0)
                session = f"shared-{(worker * 7 + turn) % sessions}"
                prompt = f"w{worker}-t{turn}"
                result = await pipe.execute_with_context(session, "user", prompt)
                if not result.complete or result.warnings:
                    raise SystemExit(f"turn {prompt} failed: {result.status} {result.warnings}")
                seen = len(result.messages) - 2
                lines.append(json.dumps({"session": session, "prompt": prompt, "seen": seen}))

        await asyncio.gather(*(run() for _ in range(tasks)))
    await store.aclose()
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    url, prefix, worker, turns, sessions, tasks = sys.argv[1:7]
    asyncio.run(main(url, prefix, int(worker), int(turns), int(sessions), int(tasks)))
