"""The demo page in headless Chromium: EventSource and WebSocket render the stream, Stop works."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.providers import MockProvider, Scenario

from ..browser.jupyterlab import CHROMIUM, CHROMIUM_ARGS
from ..conftest import require_binary
from .conftest import LONG_ANSWER, direct_text, wait_for

# The text of an output panel without the page's own notes ("[stopped: ...]").
STREAMED_TEXT = """(id) => Array.from(document.getElementById(id).childNodes)
    .filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.data).join('')"""


def demo_provider() -> MockProvider:
    provider = MockProvider.demo(chunk_delay=0.01, first_chunk_delay=0)
    provider.scenarios.insert(0, Scenario(LONG_ANSWER, match="^endless"))
    return provider


@pytest.mark.browser
def test_demo_page_streams_and_stops(serve: Any, artifacts_dir: Path, tmp_path: Path) -> None:
    executable = require_binary(CHROMIUM, "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    live = serve(demo_provider())
    prompt = "Write a short story about a lighthouse keeper"
    expected = asyncio.run(
        direct_text(MockProvider.demo(chunk_delay=0, first_chunk_delay=0), prompt)
    )
    haiku = "Write a haiku about rain"
    expected_haiku = asyncio.run(
        direct_text(MockProvider.demo(chunk_delay=0, first_chunk_delay=0), haiku)
    )
    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--disk-cache-dir={tmp_path / 'cache'}"],
            viewport={"width": 1200, "height": 820},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(live.url + "/")

            # EventSource: the whole answer, then the result's status.
            page.fill("#prompt", prompt)
            page.click("#sse-start")
            page.wait_for_selector('#sse-status[data-state="finished"]')
            assert page.evaluate(STREAMED_TEXT, "sse-output") == expected

            # WebSocket: a whole answer, then a second prompt on the same socket, stopped.
            page.fill("#prompt", haiku)
            page.click("#ws-start")
            page.wait_for_selector('#ws-status[data-state="finished"]')
            assert page.evaluate(STREAMED_TEXT, "ws-output") == expected_haiku
            page.screenshot(path=str(artifacts_dir / "web-demo-finished.png"), full_page=True)

            page.fill("#prompt", "endless text, please")
            page.click("#ws-start")
            page.wait_for_function(
                "() => document.getElementById('ws-output').textContent.length > 60"
            )
            page.screenshot(path=str(artifacts_dir / "web-demo-streaming.png"), full_page=True)
            page.click("#stop")
            page.wait_for_selector('#ws-status[data-state="stopped"]')
            partial = page.evaluate(STREAMED_TEXT, "ws-output")
            assert 60 < len(partial) < len(LONG_ANSWER) and LONG_ANSWER.startswith(partial)
            assert live.provider.calls[-1].outcome == "closed"
            page.screenshot(path=str(artifacts_dir / "web-demo-ws-stopped.png"), full_page=True)

            # Stop on an EventSource closes the connection; the server stops the provider.
            page.click("#sse-start")
            page.wait_for_function(
                "() => document.getElementById('sse-output').textContent.length > 60"
            )
            page.click("#stop")
            page.wait_for_selector('#sse-status[data-state="stopped"]')
            call = live.provider.calls[-1]
            assert wait_for(lambda: call.ended is not None, 3.0)
            assert call.outcome == "closed"
            page.screenshot(path=str(artifacts_dir / "web-demo-sse-stopped.png"), full_page=True)
        finally:
            context.close()
    assert problems == []


@pytest.mark.browser
def test_demo_page_resumes_after_a_dropped_connection(serve: Any, tmp_path: Path) -> None:
    """The first response is cut after a few events (the page sees the connection end);
    EventSource reconnects with Last-Event-ID and the page shows the rest, once."""
    executable = require_binary(CHROMIUM, "apt-get install chromium")
    from playwright.sync_api import Route, sync_playwright

    live = serve(demo_provider(), heartbeat=None)
    seen: list[dict[str, str]] = []

    def cut_the_first(route: Route) -> None:
        request = route.request
        seen.append({"url": request.url})
        if len(seen) > 1:
            route.continue_()
            return
        response = route.fetch()
        blocks = response.body().split(b"\n\n")
        route.fulfill(
            status=200, headers=response.headers, body=b"\n\n".join(blocks[:12]) + b"\n\n"
        )

    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--disk-cache-dir={tmp_path / 'cache'}"],
        )
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.route("**/stream?*", cut_the_first)
            page.goto(live.url + "/")
            page.fill("#prompt", "endless text, please")
            page.click("#sse-start")
            page.wait_for_selector('#sse-status[data-state="finished"]')
            assert page.evaluate(STREAMED_TEXT, "sse-output") == LONG_ANSWER
        finally:
            context.close()
    assert problems == []
    # EventSource reconnected to the same URL (with Last-Event-ID, which Chromium adds
    # below the layer Playwright intercepts): the same answer went on, not a new one.
    assert len(seen) == 2 and seen[1]["url"] == seen[0]["url"]
    assert len(live.provider.calls) == 1
