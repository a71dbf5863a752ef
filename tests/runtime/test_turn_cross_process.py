"""Stop a turn that waits for a session lock held by another process (a second kernel).

The other process holds the session's lease in a real SQLite file; the turn waits
for it off the event loop, so Stop is handled at once and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pk_notebook import Pipeline, StreamStatus
from pk_notebook.sessions import SQLiteStore

from .test_turn import RecordingProvider, text_events

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pk_notebook.sessions import SQLiteStore

    async def main():
        store = SQLiteStore(sys.argv[1])
        async with store.lock("shared", timeout=5):
            print("held", flush=True)
            await asyncio.sleep(float(sys.argv[2]))
        await store.aclose()

    asyncio.run(main())
    """
)


async def test_stop_while_another_process_holds_the_session(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    holder = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; reads are off-loop
        [sys.executable, "-c", HOLDER, str(path), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        assert line.strip() == "held"
        provider = RecordingProvider(text_events("answer"))
        store = SQLiteStore(path, lease=30)
        pipe = Pipeline(provider, state_store=store)
        stream = pipe.stream("hi", session="shared")
        opening = asyncio.ensure_future(stream.open())
        await asyncio.sleep(0.3)
        assert not opening.done(), "the lock held by the other process was not waited for"
        started = time.monotonic()
        stream.stop()
        await asyncio.wait_for(opening, 2)
        assert time.monotonic() - started < 0.5
        assert stream.result.status is StreamStatus.STOPPED
        assert provider.calls == 0
        assert pipe.active_streams == 0
        await asyncio.wait_for(pipe.shutdown(), 5)
        await store.aclose()
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
