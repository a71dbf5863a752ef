"""Fixtures for browser tests: JupyterLab, Notebook 7 and Chromium, started once.

The setups users really have (README, "Where it works"), each a server started once per
session on first use, serving its own temporary root (``server.root``):

``lab_without_anywidget``  JupyterLab from a second venv that has jupyterlab_widgets but not
                           anywidget, running the kernel from the project's .venv (a hub
                           whose admin never installed anywidget: the chat's input box has no
                           front end).
``lab_without_widgets``    the same without jupyterlab_widgets: no widget view renders.
``lab_ipykernel6``         the project's JupyterLab with Colab's kernel (ipykernel 6.17.1,
                           IPython 7.34.0) as the notebooks' kernel.

``page_without_anywidget``, ``page_without_widgets``, ``page_ipykernel6``: a ``LabPage`` on
each (one browser context per test). Write notebooks with ``server.notebook(name, cells)``,
which puts the server's kernel in them, then ``page.open(name)``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ARTIFACTS, require_binary
from ..envs import (  # noqa: F401  (fixtures for browser tests)
    IPYKERNEL6_KERNEL,
    KERNEL_IPYKERNEL6,
    SERVER_WITHOUT_ANYWIDGET,
    SERVER_WITHOUT_WIDGETS,
    ensure_env,
    ipykernel6_env,
    ipykernel6_kernels,
)
from .jupyterlab import CHROMIUM, JupyterLab, Kernel, LabPage, chromium


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the servers serve; tests write their notebooks here."""
    return tmp_path_factory.mktemp("lab_root")


def _serve(
    app: str,
    root: Path,
    tmp: pytest.TempPathFactory,
    *,
    label: str | None = None,
    python: str = sys.executable,
    kernels: tuple[Kernel, ...] = (),
) -> Iterator[JupyterLab]:
    require_binary(CHROMIUM, "apt-get install chromium")
    label = label or app
    env = {"PK_NOTEBOOK_HOME": str(tmp.mktemp(f"{label}_pk_home")), "PK_NOTEBOOK_PROVIDER": "mock"}
    server = JupyterLab(
        root, tmp.mktemp(f"{label}_home"), env=env, app=app, python=python, kernels=kernels
    )
    server.start()
    yield server
    server.stop()


# The kernel of a split server: the project's own environment (this interpreter), under the
# name notebooks use by default, so it replaces the server venv's own python3.
PROJECT_KERNEL = Kernel("python3", sys.executable, "Python 3 (project .venv)")


@contextmanager
def _page(server: JupyterLab, browser: Any) -> Iterator[LabPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield LabPage(page, server, ARTIFACTS)
    finally:
        context.close()


@pytest.fixture(scope="session")
def jupyterlab(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    yield from _serve("lab", lab_root, tmp_path_factory)


@pytest.fixture(scope="session")
def notebook7(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """Notebook 7 (the ``notebook`` package) on the same folder: the other front end."""
    yield from _serve("notebook", lab_root, tmp_path_factory)


@pytest.fixture(scope="session")
def lab_without_anywidget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """JupyterLab from a venv with jupyterlab_widgets, without anywidget; the project's kernel."""
    server_env = ensure_env(SERVER_WITHOUT_ANYWIDGET)
    yield from _serve(
        "lab",
        tmp_path_factory.mktemp("root_without_anywidget"),
        tmp_path_factory,
        label="without_anywidget",
        python=str(server_env.python),
        kernels=(PROJECT_KERNEL,),
    )


@pytest.fixture(scope="session")
def lab_without_widgets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """JupyterLab from a venv without jupyterlab_widgets (nor anywidget); the project's kernel."""
    server_env = ensure_env(SERVER_WITHOUT_WIDGETS)
    yield from _serve(
        "lab",
        tmp_path_factory.mktemp("root_without_widgets"),
        tmp_path_factory,
        label="without_widgets",
        python=str(server_env.python),
        kernels=(PROJECT_KERNEL,),
    )


@pytest.fixture(scope="session")
def lab_ipykernel6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """The project's JupyterLab whose notebooks run Colab's kernel (``IPYKERNEL6_KERNEL``)."""
    kernel_env = ensure_env(KERNEL_IPYKERNEL6)
    kernel = Kernel(IPYKERNEL6_KERNEL, str(kernel_env.python), "Python (ipykernel 6)")
    yield from _serve(
        "lab",
        tmp_path_factory.mktemp("root_ipykernel6"),
        tmp_path_factory,
        label="ipykernel6",
        kernels=(kernel,),
    )


# Module scope, not session: while Playwright's sync API is open it marks its event
# loop as running, which breaks every async test collected after a browser module.
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_binary(CHROMIUM, "apt-get install chromium")
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@pytest.fixture
def lab_page(jupyterlab: JupyterLab, browser: Any) -> Iterator[LabPage]:
    with _page(jupyterlab, browser) as page:
        yield page


@pytest.fixture
def nb7_page(notebook7: JupyterLab, browser: Any) -> Iterator[LabPage]:
    with _page(notebook7, browser) as page:
        yield page


@pytest.fixture
def page_without_anywidget(lab_without_anywidget: JupyterLab, browser: Any) -> Iterator[LabPage]:
    with _page(lab_without_anywidget, browser) as page:
        yield page


@pytest.fixture
def page_without_widgets(lab_without_widgets: JupyterLab, browser: Any) -> Iterator[LabPage]:
    with _page(lab_without_widgets, browser) as page:
        yield page


@pytest.fixture
def page_ipykernel6(lab_ipykernel6: JupyterLab, browser: Any) -> Iterator[LabPage]:
    with _page(lab_ipykernel6, browser) as page:
        yield page
