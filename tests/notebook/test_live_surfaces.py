"""Where Stop cannot work, no dead button: the answer still grows, and one line says why.

A Stop click is handled while a cell awaits only from ipykernel 7.4 (ipykernel#1565);
older kernels (Colab's 6.17) would run the whole paid answer before seeing it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pk_notebook.notebook.live import hint_old_kernel, stop_supported

from .conftest import KernelSession, button_comm_ids


@pytest.mark.parametrize(
    ("version", "supported"),
    [("7.4.0", True), ("7.10.1", True), ("8.0.0a1", True), ("7.3.9", False),
     ("6.17.1", False), ("5.5.6", False), ("", False), ("unknown", False)],
)  # fmt: skip
def test_the_version_check(version: str, supported: bool) -> None:
    assert stop_supported(version) is supported


def test_the_hint_says_what_to_do() -> None:
    hint = hint_old_kernel("6.17.1")
    assert "ipykernel >= 7.4" in hint and "6.17.1" in hint and "Kernel > Interrupt" in hint


SLOW = (
    "from pk_notebook import Pipeline\nfrom pk_notebook.providers import MockProvider\n"
    "slow = Pipeline(MockProvider.demo(chunk_delay=0.02))"
)


def status_texts(run: Any) -> list[str]:
    texts = []
    for msg in run.of_type("display_data", "update_display_data"):
        data = msg["content"]["data"]
        if set(data) == {"text/plain"}:
            texts.append(data["text/plain"])
    return texts


@pytest.mark.kernel
@pytest.mark.slow
def test_colabs_kernel_gets_the_hint_instead_of_a_button(old_kernel: KernelSession) -> None:
    old_kernel.ok(SLOW, interactive=False)
    run = old_kernel.ok("%%stream --pipeline slow\nWrite a haiku about rain")
    assert not button_comm_ids(run), "a Stop button was offered on a kernel that cannot use it"
    hint = "Stop needs ipykernel >= 7.4 (this kernel has 6.17.1)"
    assert any(hint in text for text in status_texts(run))
    renders = [
        m for m in run.of_type("update_display_data") if "text/markdown" in m["content"]["data"]
    ]
    assert renders, "the answer did not grow while it streamed"
    assert "Quiet rain waits" in run.outputs[-1]["data"]["text/markdown"]


@pytest.mark.kernel
def test_a_current_kernel_gets_the_button_and_no_hint(kernel: KernelSession) -> None:
    kernel.ok(SLOW, interactive=False)
    run = kernel.ok("%%stream --pipeline slow\nWrite a haiku about rain")
    assert button_comm_ids(run)
    assert not any("ipykernel" in t for t in status_texts(run))


@pytest.mark.kernel
def test_the_live_status_names_what_was_substituted(kernel: KernelSession) -> None:
    kernel.ok(SLOW + "\ncity = 'Lisbon'\nnotes = 'x' * 5000", interactive=False)
    run = kernel.ok("%%stream --pipeline slow\nPlan a day in {city}. Context: {notes}")
    # The status line is an HTML widget under the Stop button: read its synced values.
    states = [
        m["content"]["data"].get("state", {}).get("value", "")
        for m in run.of_type("comm_open", "comm_msg")
    ]
    status = " ".join(s for s in states if isinstance(s, str) and "substituted" in s)
    assert "substituted {city} (6 chars)" in status, states[-5:]
    assert "{notes} (2,000 of 5,000 chars: cut)" in status
