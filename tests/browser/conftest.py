"""Fixtures for browser tests: JupyterLab, Notebook 7 and Chromium, started once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ARTIFACTS, require_binary
from .jupyterlab import CHROMIUM, JupyterLab, LabPage, chromium


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the servers serve; tests write their notebooks here."""
    return tmp_path_factory.mktemp("lab_root")


def _serve(app: str, root: Path, tmp: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    require_binary(CHROMIUM, "apt-get install chromium")
    env = {"PK_NOTEBOOK_HOME": str(tmp.mktemp(f"{app}_pk_home")), "PK_NOTEBOOK_PROVIDER": "mock"}
    server = JupyterLab(root, tmp.mktemp(f"{app}_home"), env=env, app=app)
    server.start()
    yield server
    server.stop()


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
