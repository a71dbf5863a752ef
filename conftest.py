"""Settings for the whole test run, notebooks included.

nbval starts kernels with this process's environment, so setting it here forces
the offline mock provider and a throw-away session folder for every notebook:
a user's real API key can never change the committed outputs.
"""

from __future__ import annotations

import os
import tempfile

os.environ["PK_NOTEBOOK_PROVIDER"] = "mock"
os.environ["PK_NOTEBOOK_HOME"] = tempfile.mkdtemp(prefix="pk_notebook_test_home_")
for _key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
    os.environ.pop(_key, None)
