"""The blocking facade works in scripts, inside a running loop, and with nest_asyncio applied."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pk_notebook import Pipeline, ProviderMiddleware, StreamStatus
from pk_notebook.providers import MockProvider, Scenario


def make_pipe() -> Pipeline:
    return Pipeline(
        ProviderMiddleware(MockProvider([Scenario("one two three")], chunk_delay=0.001))
    )


def test_sync_execute_and_stream_from_plain_code() -> None:
    pipe = make_pipe()
    assert pipe.sync.execute("user", "x").text == "one two three"
    stream = pipe.sync.execute_stream("user", "x")
    assert [c.content for c in stream if not c.final] == ["one", " two", " three"]
    assert stream.status is StreamStatus.FINISHED
    assert pipe.sync.execute_with_context("s", "user", "x").session_id == "s"
    assert len(pipe.sync.run(pipe.state_store.load("s"))) == 2
    pipe.sync.shutdown()


async def test_sync_calls_work_while_an_event_loop_runs_in_this_thread() -> None:
    # A notebook cell that is not async runs inside the kernel's running loop.
    pipe = make_pipe()
    result = pipe.sync.execute("user", "x")
    assert result.text == "one two three"
    with pipe.sync.execute_stream("user", "x") as stream:
        first = stream.next()
    assert first.content == "one"
    assert stream.status is StreamStatus.STOPPED


def test_sync_facade_and_async_api_survive_nest_asyncio() -> None:
    # In a subprocess: nest_asyncio patches asyncio globally for the whole process.
    code = textwrap.dedent(
        """
        import asyncio, nest_asyncio
        nest_asyncio.apply()
        from pk_notebook import Pipeline, ProviderMiddleware
        from pk_notebook.providers import MockProvider, Scenario
        pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario("a b c")], chunk_delay=0.001)))
        print(pipe.sync.execute("user", "x").text)
        async def main():
            stream = await pipe.execute_stream("user", "x")
            async for chunk in stream:
                if chunk.index == 1:
                    stream.stop()
            return stream.status.value, stream.text
        print(asyncio.run(main()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["a b c", "('stopped', 'a b')"]


def test_ctrl_c_during_a_sync_call_stops_the_stream() -> None:
    code = textwrap.dedent(
        """
        import os, signal, threading
        from pk_notebook import Pipeline, ProviderMiddleware
        from pk_notebook.providers import MockProvider, Scenario
        provider = MockProvider([Scenario(" ".join(["w"] * 500))], chunk_delay=0.01)
        pipe = Pipeline(ProviderMiddleware(provider))
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            pipe.sync.execute("user", "x")
        except KeyboardInterrupt:
            # No waiting here: the call has fully ended by the time the interrupt arrives.
            print("interrupted", provider.calls[-1].outcome)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "interrupted closed"
