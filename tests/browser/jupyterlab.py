"""A real JupyterLab, driven by headless Chromium, for tests of what only a browser shows.

``JupyterLab`` starts ``jupyter lab`` on 127.0.0.1 with a fixed token and fresh
config/data/runtime/workspace dirs, so no saved layout or pop-up gets in the way.
By default the server and its kernel run this interpreter; ``python=`` runs the
server from another environment and ``kernels=`` adds kernelspecs to its data dir,
which is how split setups (JupyterHub: JupyterLab in one venv, the kernel in another)
and older kernels are tested (tests/envs.py builds those environments).
``LabPage`` wraps a Playwright page with the few actions the tests need: open a
notebook, run a cell, read outputs, take screenshots.

Facts this relies on (see NOTES.md section 7): Debian's chromium at
/usr/bin/chromium with the networking flags below; ``--allow-root`` as root;
``JUPYTER_PREFER_ENV_PATH=0`` so the kernel runs this interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
TOKEN = "pk-notebook-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Kernel:
    """A kernelspec to install in a server's data dir: ``name`` runs ipykernel in the
    environment of ``python``."""

    name: str
    python: str
    display_name: str = "Python 3"


class JupyterLab:
    """``jupyter lab`` (or, with ``app="notebook"``, Notebook 7) in a subprocess, serving
    ``root``; stop() kills its process group.

    ``python``: the interpreter the server runs in (default: this one). Its environment decides
    which front-end extensions the page loads, as on a hub.
    ``kernels``: kernelspecs written to the server's own data dir before it starts; the first
    one's name is ``kernel_name``, the kernel ``notebook()`` puts in new notebooks. A kernel
    named ``python3`` replaces the server environment's own (JUPYTER_PREFER_ENV_PATH=0).
    Without ``kernels`` notebooks use ``python3`` from this interpreter's environment.
    """

    def __init__(
        self,
        root: Path,
        home: Path,
        env: dict[str, str] | None = None,
        app: str = "lab",
        *,
        python: str = sys.executable,
        kernels: tuple[Kernel, ...] = (),
    ) -> None:
        self.app = app
        self.root = root
        self.home = home
        self.python = python
        self.kernels = kernels
        self.kernel_name = kernels[0].name if kernels else "python3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "jupyterlab.log"

    def start(self, timeout: float = 90.0) -> JupyterLab:
        dirs = {
            name: self.home / name
            for name in ("config", "data", "runtime", "settings", "workspaces")
        }
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        for kernel in self.kernels:
            spec = dirs["data"] / "kernels" / kernel.name
            spec.mkdir(parents=True, exist_ok=True)
            argv = [kernel.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            (spec / "kernel.json").write_text(
                json.dumps(
                    {"argv": argv, "display_name": kernel.display_name, "language": "python"}
                )
            )
        # Quiet the "news" and update pop-ups that would cover the notebook.
        settings = dirs["settings"] / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            # Its own data dir: the kernelspecs above, and none of the user's own.
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
            "JUPYTER_PREFER_ENV_PATH": "0",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            **self.extra_env,
        }
        cmd = [
            self.python,
            "-m",
            "jupyter",
            self.app,
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.disable_check_xsrf=True",
            "--ServerApp.open_browser=False",
        ]
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/api/status", params={"token": TOKEN}, timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jupyter lab did not start within {timeout:g} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}{path}", params={"token": TOKEN}, timeout=30, **kwargs
        )

    def notebook(self, name: str, cells: list[str]) -> Path:
        """Write notebook ``name`` in this server's root, on this server's ``kernel_name``."""
        return write_notebook(self.root / name, cells, kernel=self.kernel_name)

    def page_config(self) -> dict[str, Any]:
        """The page config JupyterLab serves with /lab: which extensions the browser loads
        (``federated_extensions``), as the page really gets it."""
        html = self.api("GET", "/lab").text
        start = html.index('id="jupyter-config-data"')
        start = html.index(">", start) + 1
        return dict(json.loads(html[start : html.index("</script>", start)]))

    def labextensions(self) -> set[str]:
        """Names of the prebuilt (federated) extensions this server gives the page."""
        return {ext["name"] for ext in self.page_config().get("federated_extensions", [])}

    def notebook_url(self, name: str) -> str:
        if self.app == "notebook":
            return f"{self.url}/notebooks/{name}?token={TOKEN}"
        return f"{self.url}/lab/tree/{name}?token={TOKEN}&reset"

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            # Shut kernels down first so none outlives the test run.
            for kernel in self.api("GET", "/api/kernels").json():
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


def write_notebook(path: Path, cells: list[str], kernel: str = "python3") -> Path:
    """Write a notebook whose code cells are ``cells`` (no outputs), on kernelspec ``kernel``."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for src in cells
        ],
        "metadata": {
            "kernelspec": {"display_name": kernel, "language": "python", "name": kernel},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


class LabPage:
    """A notebook open in JupyterLab in headless Chromium."""

    def __init__(self, page: Any, lab: JupyterLab, artifacts: Path) -> None:
        self.page = page
        self.lab = lab
        self.artifacts = artifacts

    def open(self, name: str, timeout: float = 60.0) -> None:
        self.page.goto(self.lab.notebook_url(name), wait_until="domcontentloaded")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the notebook's cells are drawn and its kernel is idle (after
        ``open`` or a ``page.reload()``), then dismiss any dialog."""
        page = self.page
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout * 1000)
        # Wait until the kernel is ready (idle indicator in the toolbar/status bar).
        page.wait_for_function(
            """() => {
                const el = document.querySelector(
                    '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
                const status = document.querySelector('#jp-main-statusbar');
                const text = status ? status.textContent : '';
                return (el && el.getAttribute('data-status') === 'idle') || /Idle/.test(text);
            }""",
            timeout=timeout * 1000,
        )
        self.dismiss_dialogs()

    def dismiss_dialogs(self) -> None:
        for label in ("Select", "No", "Dismiss", "Close"):
            button = self.page.locator(".jp-Dialog button", has_text=label)
            if button.count():
                with contextlib.suppress(Exception):
                    button.first.click(timeout=1000)

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, index: int) -> None:
        """Select cell ``index`` and run it (Ctrl+Enter); does not wait for it to finish."""
        cell = self.cell(index)
        cell.locator(".jp-InputArea-prompt").click()
        # The toolbar's run button acts on the active cell, wherever keyboard focus is.
        self.page.locator(
            '.jp-NotebookPanel-toolbar [data-command="notebook:run-cell-and-select-next"]'
        ).first.click()

    def wait_cell_done(self, index: int, timeout: float = 60.0) -> None:
        """Wait until the cell's prompt shows an execution count (not ``[*]``)."""
        prompt = self.cell(index).locator(".jp-InputArea-prompt")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = prompt.inner_text().strip()
            if (
                text.startswith("[")
                and text not in ("[*]:", "[ ]:", "[*]", "[ ]")
                and any(c.isdigit() for c in text)
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"cell {index} did not finish within {timeout:g} s")

    def run_cell_and_wait(self, index: int, timeout: float = 60.0, attempts: int = 3) -> None:
        """Run cell ``index`` and wait until it has finished.

        JupyterLab silently drops a run requested before the notebook's kernel
        connection is attached, even when the status bar already says Idle: the
        prompt then stays ``[ ]``. A run that was accepted shows ``[*]`` or a count
        at once, so only a prompt still blank after a few seconds is run again (a
        cell never runs twice). Saves a screenshot if it times out.
        """
        prompt = self.cell(index).locator(".jp-InputArea-prompt")
        try:
            for _ in range(attempts):
                self.run_cell(index)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    if prompt.inner_text().strip() not in ("[ ]:", "[ ]", ""):
                        self.wait_cell_done(index, timeout)
                        return
                    time.sleep(0.1)
                self.dismiss_dialogs()
            raise TimeoutError(f"cell {index} never started (is the kernel attached?)")
        except TimeoutError:
            self.screenshot(f"timeout-cell-{index}")
            raise

    def kernel_id(self, name: str) -> str:
        """The id of the kernel the server runs for notebook ``name`` (its session's)."""
        for session in self.lab.api("GET", "/api/sessions").json():
            if session.get("path") == name and session.get("kernel"):
                return str(session["kernel"]["id"])
        raise LookupError(f"no kernel session for {name}")

    def output_text(self, index: int) -> str:
        # .first: a widget Output inside the cell has an OutputArea of its own.
        return self.cell(index).locator(".jp-OutputArea").first.inner_text()

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[Any]:
    """A headless Chromium browser (Playwright) with its state in ``tmp``."""
    from playwright.sync_api import sync_playwright

    env_home = tmp / "chromium-home"
    env_home.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--disk-cache-dir={env_home / 'cache'}"],
            env={
                **os.environ,
                "HOME": str(env_home),
                "XDG_CONFIG_HOME": str(env_home / "config"),
                "XDG_CACHE_HOME": str(env_home / "cache"),
            },
        )
        try:
            yield browser
        finally:
            browser.close()
