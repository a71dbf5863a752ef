"""Fixtures for browser tests: one JupyterLab and one Chromium per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ARTIFACTS, require_binary
from .jupyterlab import CHROMIUM, JupyterLab, LabPage, chromium


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder JupyterLab serves; tests write their notebooks here."""
    return tmp_path_factory.mktemp("lab_root")


@pytest.fixture(scope="session")
def jupyterlab(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    require_binary(CHROMIUM, "apt-get install chromium")
    home = tmp_path_factory.mktemp("lab_home")
    pk_home = tmp_path_factory.mktemp("lab_pk_home")
    lab = JupyterLab(
        lab_root, home, env={"PK_NOTEBOOK_HOME": str(pk_home), "PK_NOTEBOOK_PROVIDER": "mock"}
    )
    lab.start()
    yield lab
    lab.stop()


# Module scope, not session: while Playwright's sync API is open it marks its event
# loop as running, which breaks every async test collected after a browser module.
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_binary(CHROMIUM, "apt-get install chromium")
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@pytest.fixture
def lab_page(jupyterlab: JupyterLab, browser: Any) -> Iterator[LabPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield LabPage(page, jupyterlab, ARTIFACTS)
    finally:
        context.close()


@pytest.fixture(scope="session")
def notebook7(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """Notebook 7 (the ``notebook`` package) on the same folder: the other front end."""
    require_binary(CHROMIUM, "apt-get install chromium")
    home = tmp_path_factory.mktemp("nb7_home")
    pk_home = tmp_path_factory.mktemp("nb7_pk_home")
    server = JupyterLab(
        lab_root,
        home,
        env={"PK_NOTEBOOK_HOME": str(pk_home), "PK_NOTEBOOK_PROVIDER": "mock"},
        app="notebook",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nb7_page(notebook7: JupyterLab, browser: Any) -> Iterator[LabPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield LabPage(page, notebook7, ARTIFACTS)
    finally:
        context.close()
