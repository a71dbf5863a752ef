"""The ``old_kernel`` fixture is what it claims: Colab's kernel, with this checkout installed.

Colab pins ipykernel 6.17.1 and IPython 7.34.0 (README, "Where it works"). The fixture's
environment installs those first and then the project's kernel-side extra, as a Colab user's
``%pip install "pk-notebook[notebook]"`` would, so these tests also prove that the extra leaves
the kernel's own packages alone and brings no JupyterLab.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..envs import COLAB_IPYKERNEL, COLAB_IPYTHON, ROOT, VirtualEnv
from .conftest import KernelSession

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

HAIKU = "Write a haiku about the sea"


def test_the_old_kernel_runs_colabs_ipykernel_and_this_checkout(
    old_kernel: KernelSession, ipykernel6_env: VirtualEnv
) -> None:
    assert old_kernel.value("__import__('ipykernel').__version__") == repr(COLAB_IPYKERNEL)
    assert old_kernel.value("__import__('IPython').__version__") == repr(COLAB_IPYTHON)
    assert old_kernel.value("__import__('sys').executable") == repr(str(ipykernel6_env.python))
    # Editable: the kernel imports the code under test, not a stale copy.
    assert old_kernel.value("__import__('pk_notebook').__file__") == repr(
        str(ROOT / "pk_notebook" / "__init__.py")
    )


def test_the_kernel_extra_kept_the_kernel_and_brought_no_jupyterlab(
    ipykernel6_env: VirtualEnv,
) -> None:
    versions = ipykernel6_env.versions()
    assert versions["ipykernel"] == COLAB_IPYKERNEL
    assert versions["ipython"] == COLAB_IPYTHON
    assert versions["pk-notebook"]
    server_side = {"jupyterlab", "notebook", "jupyter-server", "jupyterlab-server"}
    assert server_side & set(versions) == set()


def test_building_the_project_printed_no_packaging_warning(ipykernel6_env: VirtualEnv) -> None:
    """pip shows the build backend's warnings (deprecated license table, editable mode)
    even with --quiet; the environment's build log holds that output for this pyproject."""
    log = Path(ipykernel6_env.log).read_text(errors="replace")
    machine_config = "is ignored: it is neither a file nor a directory"  # this host's pip.conf
    ours = [
        line
        for line in log.splitlines()
        if "warning" in line.lower() and machine_config not in line
    ]
    assert ours == []


@pytest.mark.parametrize("interactive", [False, True], ids=["batch", "interactive"])
def test_a_stream_cell_runs_to_the_end_on_the_old_kernel(
    old_kernel: KernelSession, interactive: bool
) -> None:
    execution = old_kernel.ok(f"%%stream --no-history\n{HAIKU}", interactive=interactive)
    texts = [
        str(out.get("data", {}).get("text/markdown", ""))
        for out in execution.outputs
        if out["output_type"] in ("display_data", "execute_result")
    ]
    assert any("A haiku about the sea" in text for text in texts), execution.outputs
