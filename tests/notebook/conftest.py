"""Real Jupyter kernels for notebook tests (the %%stream magic and the chat widget).

``kernel`` is one kernel per test module (starting one takes about a second);
``KernelSession.run`` executes code like a front end would and returns every
iopub message of that execution, ``outputs`` folds them the way nbclient and
JupyterLab do (clear_output, update_display_data), and ``click`` sends a widget
button click as the browser's widget manager would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import pytest

# Colab's kernel (ipykernel 6.17.1) as fixtures: ipykernel6_env, ipykernel6_kernels, old_kernel.
from ..envs import ipykernel6_env, ipykernel6_kernels, old_kernel  # noqa: F401

KERNEL_NAME = "python3"
SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


def kernel_env(home: Path) -> dict[str, str]:
    """The environment of a test kernel: isolated pk_notebook home, mock provider, no keys."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(PK_NOTEBOOK_HOME=str(home), PK_NOTEBOOK_PROVIDER="mock", JUPYTER_PREFER_ENV_PATH="0")
    return env


@dataclass
class Execution:
    """What one execute request produced."""

    msg_id: str
    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    def count(self, msg_type: str) -> int:
        return len(self.of_type(msg_type))

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return fold_outputs(self.messages)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stderr"
        )


def fold_outputs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cell's outputs as a saved notebook would hold them (nbclient's rules)."""
    outputs: list[dict[str, Any]] = []
    by_display_id: dict[str, list[dict[str, Any]]] = {}
    clear_pending = False
    for msg in messages:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                clear_pending = True
            else:
                outputs.clear()
            continue
        if kind == "update_display_data":
            for out in by_display_id.get(content.get("transient", {}).get("display_id", ""), []):
                out["data"] = content["data"]
            continue
        if kind not in ("display_data", "execute_result", "stream", "error"):
            continue
        if clear_pending:
            outputs.clear()
            clear_pending = False
        out = {"output_type": kind, **{k: v for k, v in content.items() if k != "transient"}}
        outputs.append(out)
        display_id = content.get("transient", {}).get("display_id")
        if display_id:
            by_display_id.setdefault(display_id, []).append(out)
    return outputs


class KernelSession:
    """A kernel and a client, as a front end sees them."""

    def __init__(self, home: Path) -> None:
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name=KERNEL_NAME)
        self.km.start_kernel(env=kernel_env(home))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def run(
        self,
        code: str,
        *,
        interactive: bool = True,
        timeout: float = 60.0,
        during: Callable[[Execution, dict[str, Any]], None] | None = None,
    ) -> Execution:
        """Execute ``code``; ``interactive`` sends allow_stdin like JupyterLab does
        (False is what nbclient, nbval and papermill send). ``during(execution, msg)``
        sees each iopub message as it arrives (to click Stop, interrupt, ...)."""
        started = time.monotonic()
        msg_id = self.kc.execute(code, allow_stdin=interactive)
        execution = Execution(msg_id, {})
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no idle after {timeout:g} s; got "
                    f"{[m['msg_type'] for m in execution.messages]}"
                )
            try:
                msg = self.kc.get_iopub_msg(timeout=min(remaining, 0.2))
            except Empty:
                if during is not None:
                    during(execution, {"msg_type": "tick", "content": {}})
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            execution.messages.append(msg)
            if during is not None:
                during(execution, msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        execution.elapsed = time.monotonic() - started
        while True:
            reply = self.kc.get_shell_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == msg_id:
                execution.reply = reply
                return execution

    def ok(self, code: str, **kwargs: Any) -> Execution:
        """``run`` and assert the cell succeeded."""
        execution = self.run(code, **kwargs)
        content = execution.reply["content"]
        assert content["status"] == "ok", content.get("traceback") or execution.stderr
        return execution

    def click(self, comm_id: str) -> None:
        """Click an ipywidgets Button, exactly as the browser's widget manager does."""
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        msg = self.kc.session.msg("comm_msg", content)
        self.kc.shell_channel.send(msg)

    def value(self, expression: str) -> str:
        """``repr`` of ``expression`` evaluated in the kernel."""
        execution = self.ok(f"print(repr({expression}))", interactive=False)
        return execution.stdout.strip()


def button_comm_ids(execution: Execution) -> list[str]:
    """The comm ids of Button widgets opened so far during ``execution``."""
    ids = []
    for msg in execution.of_type("comm_open"):
        state = msg["content"].get("data", {}).get("state", {})
        if state.get("_model_name") == "ButtonModel":
            ids.append(msg["content"]["comm_id"])
    return ids


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelSession]:
    """One real IPython kernel (ipykernel) per test module, with pk_notebook loaded."""
    session = KernelSession(tmp_path_factory.mktemp("kernel_home"))
    try:
        session.ok("%load_ext pk_notebook", interactive=False)
        yield session
    finally:
        session.close()


@pytest.fixture
def ip() -> Iterator[Any]:
    """IPython's test shell with the extension loaded: the magics without a kernel."""
    from IPython.testing.globalipapp import get_ipython

    from pk_notebook.notebook import defaults as defaults_module

    shell = get_ipython()
    shell.run_line_magic("load_ext", "pk_notebook")
    defaults_module.reset_defaults()
    yield shell
    shell.run_line_magic("unload_ext", "pk_notebook")
