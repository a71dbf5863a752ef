"""``%%stream --dry-run``: what a cell would send, shown in the cell, and nothing sent.

The cell is prepared exactly as for a real run (substitution, ``--attach``,
``--schema``, ``--tools``, the session's history), then described instead of
streamed: the provider and model, the system prompt, how many earlier messages
of the session go along, the final prompt text, each attachment with its size,
and an estimate of the input tokens (the method of
:func:`pk_notebook.runtime.tokens.counter`: a registered tokenizer, else
characters / 4; images and files are not counted) with its cost when the model
has a price. No request is made and nothing is stored.

No API key is needed: with the provider's key unset, the provider is built without
it (for its model and price only; a real run still stops at the missing key), and
one line says the key is not set and how to set it. No key value is ever shown.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..runtime.pricing import Price, lookup_price
from ..runtime.tokens import counter
from ..runtime.types import Message

if TYPE_CHECKING:
    from .runner import CellRun

TITLE = "Dry run: nothing was sent."


async def show_dry_run(run: CellRun) -> dict[str, str]:
    """Describe what ``run`` would send, in the cell; returns the bundle shown."""
    from IPython.display import display

    bundle = await dry_run_bundle(run)
    display(bundle, raw=True)
    return bundle


def missing_key_note(env_vars: tuple[str, ...]) -> str:
    """One line: no key is set, so a real run stops; how to set one (never a value)."""
    names = " or ".join(env_vars) or "the provider's key variable"
    first = env_vars[0] if env_vars else "API_KEY"
    return (
        f"not set, so a real run of this cell stops before sending: set {names} in the "
        "environment Jupyter starts from, or in a cell (the key stays out of the notebook): "
        f"import os, getpass; os.environ[{first!r}] = getpass.getpass()"
    )


def _dollars(amount: float) -> str:
    """``0.00000045``, ``0.0012``, ``1.25``: enough digits to be more than zero."""
    if amount >= 0.01:
        return f"{amount:.4f}".rstrip("0").rstrip(".")
    return f"{amount:.10f}".rstrip("0").rstrip(".") or "0"


def _fence(text: str) -> str:
    longest = max((len(m) for m in _ticks(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _ticks(text: str) -> list[str]:
    import re

    return re.findall(r"`+", text)


def _model_and_price(run: CellRun) -> tuple[str | None, Price | None]:
    pipeline = run.pipeline
    config = pipeline.provider_middleware.config.merged(run.options.config)
    provider = pipeline.provider
    model = config.model or getattr(provider, "model", None)
    prices: dict[str, Price] = {}
    for link in pipeline.middleware:
        table = getattr(link, "prices", None)
        if isinstance(table, dict):
            prices.update(table)
    provider_prices = getattr(provider, "prices", None)
    if isinstance(provider_prices, dict):
        prices.update(provider_prices)
    return model, lookup_price(prices, model)


async def dry_run_bundle(run: CellRun) -> dict[str, str]:
    """The Markdown and plain text of a dry run (deterministic for the same cell)."""
    from .markdown import escape_markdown

    opts = run.options
    pipeline = run.pipeline
    config = pipeline.provider_middleware.config.merged(opts.config)
    model, price = _model_and_price(run)
    provider = getattr(pipeline.provider, "name", type(pipeline.provider).__name__)
    history: list[Message] = []
    if opts.session_id is not None:
        history = list(await pipeline.state_store.load(opts.session_id))
    messages = list(history)
    if config.system:
        messages.insert(0, Message("system", config.system))
    messages.append(Message("user", run.prompt))
    method, count = counter(model)
    tokens = sum(count(m.content) for m in messages if m.content)
    extra: list[str] = []
    if run.schema is not None:
        tokens += count(json.dumps(run.schema.json_schema))
        extra.append("the schema")
    if run.tools:
        described = [{"name": t.name, "parameters": t.parameters} for t in run.tools]
        tokens += count(json.dumps(described))
        extra.append("the tools")

    facts: list[tuple[str, str]] = [("Provider", f"{provider}, model {model or 'default'}")]
    if run.missing_key is not None:
        facts.append(("API key", missing_key_note(run.missing_key.env_vars)))
    if config.system:
        facts.append(("System prompt", config.system))
    if opts.session_id is not None:
        facts.append(
            (
                "History",
                f"{len(history)} earlier message{'' if len(history) == 1 else 's'} of "
                f"session {opts.session_id}",
            )
        )
    if run.schema is not None:
        facts.append(("Schema", f"{run.schema.name} (the answer must validate against it)"))
    if run.tools:
        facts.append(("Tools", ", ".join(t.name for t in run.tools)))
    counted = " and ".join(["the text", *extra])
    estimate = f"≈{tokens:,} input tokens (estimated, {method}, {counted}"
    estimate += "; attachments not counted)" if run.attachments else ")"
    facts.append(("Tokens", estimate))
    if price is not None:
        cost = tokens * price.input / 1_000_000
        facts.append(
            (
                "Cost",
                f"≈${_dollars(cost)} for the input (estimated; {model} at ${price.input:g} per "
                "million input tokens, plus the answer)",
            )
        )
    else:
        facts.append(("Cost", f"unknown (no price for {model or 'this model'})"))

    files = [a.describe() for a in run.attachments]
    substituted = run.note()

    md = [f"**{TITLE}**", ""]
    md += [f"- **{name}:** {escape_markdown(value)}" for name, value in facts]
    md += ["", f"**Prompt** ({len(run.prompt):,} characters):", "", _fence(run.prompt)]
    md += [
        "",
        f"**Attachments** ({len(files)}):" if files else "**Attachments:** none",
    ]
    md += [f"- {escape_markdown(f)}" for f in files]
    plain = [TITLE, *(f"{name}: {value}" for name, value in facts)]
    plain += ["", f"Prompt ({len(run.prompt):,} characters):", run.prompt, ""]
    plain += [f"Attachments ({len(files)}):" if files else "Attachments: none"]
    plain += [f"- {f}" for f in files]
    if substituted:
        md += ["", f"*{escape_markdown(' · '.join(substituted.splitlines()))}*"]
        plain += ["", substituted]
    return {"text/markdown": "\n".join(md), "text/plain": "\n".join(plain)}
