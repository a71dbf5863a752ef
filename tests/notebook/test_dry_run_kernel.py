"""``%%stream --dry-run`` without the provider's API key, in a real kernel: the dry run
sends nothing, so it needs no key; it shows the prompt, the token and cost estimate for
the configured model and one line saying the key is not set and how to set it. A real
run still stops at the missing key, and no key value is ever shown."""

from __future__ import annotations

import pytest

from .conftest import SECRETS, Execution, KernelSession

pytestmark = pytest.mark.kernel

PROMPT = "Hello there"
#: a stand-in key, assembled so that no key-shaped literal sits in the source
FAKE_KEY = "sk-" + "proj-" + "dryrun" * 6


@pytest.fixture
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(
        "import os\n"
        f"for name in {SECRETS!r}:\n    os.environ.pop(name, None)\n"
        "%stream config --provider openai:gpt-4o-mini\n"
        "from pk_notebook.notebook.defaults import defaults",
        interactive=False,
    )
    return kernel


def dry_run(k: KernelSession, options: str = "") -> tuple[str, str]:
    """The dry run's one output: its Markdown and its plain text."""
    run = k.ok(f"%%stream --dry-run {options}\n{PROMPT}", interactive=False)
    (output,) = run.outputs
    assert output["output_type"] == "display_data"
    return output["data"]["text/markdown"], output["data"]["text/plain"]


def everything(run: Execution) -> str:
    """Every byte the cell sent to the front end."""
    return repr([m["content"] for m in run.messages])


def test_dry_run_without_a_key_shows_prompt_tokens_cost_and_how_to_set_the_key(
    k: KernelSession,
) -> None:
    md, plain = dry_run(k)
    assert md.startswith("**Dry run: nothing was sent.**")
    assert "- **Provider:** openai, model gpt-4o-mini" in md
    assert f"```text\n{PROMPT}\n```" in md
    assert "- **Tokens:** ≈3 input tokens (estimated, chars/4, the text)" in md
    assert "**Cost:** ≈\\$0.00000045 for the input (estimated; gpt-4o-mini at \\$0.15 per" in md
    # One line: the key is not set, a real run would stop, and how to set it.
    (key_line,) = [line for line in plain.splitlines() if line.startswith("API key:")]
    assert key_line == (
        "API key: not set, so a real run of this cell stops before sending: set "
        "OPENAI_API_KEY in the environment Jupyter starts from, or in a cell (the key "
        "stays out of the notebook): import os, getpass; "
        "os.environ['OPENAI_API_KEY'] = getpass.getpass()"
    )
    assert "- **API key:** not set, so a real run of this cell stops before sending" in md
    # The order a reader meets: provider, the key line, the estimates, then the prompt.
    assert plain.index("Provider:") < plain.index("API key:") < plain.index("Tokens:")
    assert plain.index("Cost:") < plain.index(f"Prompt ({len(PROMPT)} characters):")
    assert dry_run(k) == (md, plain)  # deterministic


def test_dry_run_with_a_cells_provider_and_no_key(k: KernelSession) -> None:
    md, plain = dry_run(k, "-p anthropic")
    assert "- **Provider:** anthropic, model claude-sonnet-4-5" in md
    assert "Cost: ≈$0.000009 for the input (estimated; claude-sonnet-4-5 at $3 per" in plain
    assert "set ANTHROPIC_API_KEY in the environment" in plain
    assert "os.environ['ANTHROPIC_API_KEY'] = getpass.getpass()" in plain


def test_a_real_run_still_stops_at_the_missing_key_after_a_dry_run(k: KernelSession) -> None:
    dry_run(k)
    for line in ("", "-p anthropic"):
        run = k.run(f"%%stream {line}\n{PROMPT}", interactive=False)
        reply = run.reply["content"]
        assert reply["status"] == "error" and reply["ename"] == "UsageError"
        name = "anthropic" if line else "openai"
        assert reply["evalue"].startswith(f"{name} needs an API key: set {name.upper()}_API_KEY")
        # IPython shows a UsageError as one line on stderr; nothing else is shown.
        assert [o["output_type"] for o in run.outputs] == ["stream"]
        assert run.stderr.startswith(f"UsageError: {name} needs an API key")


def test_no_key_value_is_ever_shown_and_a_key_set_later_is_used(k: KernelSession) -> None:
    before = k.ok(f"%%stream --dry-run\n{PROMPT}", interactive=False)
    assert "API key: not set" in before.outputs[0]["data"]["text/plain"]
    # The dry run kept no keyless provider: the key set now is the one a run uses.
    k.ok(f"os.environ['OPENAI_API_KEY'] = {FAKE_KEY!r}", interactive=False)
    try:
        run = k.ok(f"%%stream --dry-run\n{PROMPT}", interactive=False)
        md = run.outputs[0]["data"]["text/markdown"]
        assert "- **Provider:** openai, model gpt-4o-mini" in md
        assert "API key" not in md  # the key is set: nothing to say
        assert k.value("defaults().pipeline().provider.has_key") == "True"
        config = k.ok("%stream config", interactive=False)
        for execution in (before, run, config):
            assert FAKE_KEY not in everything(execution)
            assert "dryrun" not in everything(execution)
    finally:
        k.ok("os.environ.pop('OPENAI_API_KEY', None)", interactive=False)
