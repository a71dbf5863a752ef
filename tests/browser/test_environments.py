"""The setups users really have, as fixtures: each is what it claims, and ``%%stream`` ends there.

``lab_without_anywidget`` and ``lab_without_widgets`` run JupyterLab from a second virtual
environment (tests/envs.py) and the kernel from the project's .venv, as on JupyterHub;
``lab_ipykernel6`` runs Colab's kernel. What the browser is given is read from the page
config JupyterLab really serves, and the kernel is asked who it is. The features that must
degrade well in these setups are tested on top of these fixtures elsewhere.
"""

from __future__ import annotations

import sys

import pytest

from ..envs import COLAB_IPYKERNEL
from .jupyterlab import JupyterLab, LabPage

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDGETS = "@jupyter-widgets/jupyterlab-manager"
ANYWIDGET = "anywidget"


def test_the_projects_lab_gives_the_page_both_widget_front_ends(jupyterlab: JupyterLab) -> None:
    """The reference: the check below can see both front ends when they are there."""
    assert {WIDGETS, ANYWIDGET} <= jupyterlab.labextensions()


def test_the_split_server_has_ipywidgets_front_end_but_not_anywidgets(
    lab_without_anywidget: JupyterLab,
) -> None:
    extensions = lab_without_anywidget.labextensions()
    assert WIDGETS in extensions
    assert ANYWIDGET not in extensions
    assert lab_without_anywidget.python != sys.executable


def test_the_bare_server_has_no_widget_front_end(lab_without_widgets: JupyterLab) -> None:
    extensions = lab_without_widgets.labextensions()
    assert WIDGETS not in extensions
    assert ANYWIDGET not in extensions


@pytest.mark.parametrize("server", ["lab_without_anywidget", "lab_without_widgets"])
def test_split_servers_offer_the_projects_kernel(
    server: str, request: pytest.FixtureRequest
) -> None:
    lab: JupyterLab = request.getfixturevalue(server)
    specs = lab.api("GET", "/api/kernelspecs").json()
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == sys.executable


SETUPS = {
    # fixture suffix: what the first cell must print (the kernel's interpreter and ipykernel)
    "without_anywidget": sys.executable,
    "without_widgets": sys.executable,
    "ipykernel6": f"ipykernel {COLAB_IPYKERNEL}",
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_stream_cell_runs_to_the_end(setup: str, request: pytest.FixtureRequest) -> None:
    lab: JupyterLab = request.getfixturevalue(f"lab_{setup}")
    page: LabPage = request.getfixturevalue(f"page_{setup}")
    name = f"env-smoke-{setup}.ipynb"
    lab.notebook(
        name,
        [
            "import sys, ipykernel\nprint(sys.executable, 'ipykernel', ipykernel.__version__)",
            "%load_ext pk_notebook",
            "%%stream --no-history\nWrite a haiku about the sea",
        ],
    )
    page.open(name)
    page.run_cell_and_wait(0)
    assert SETUPS[setup] in page.output_text(0)
    page.run_cell_and_wait(1)
    page.run_cell_and_wait(2, timeout=90)
    page.screenshot(f"env-{setup}-stream")
    assert "A haiku about the sea" in page.output_text(2)
