"""Running one ``%%stream`` cell: options, prompt, pipeline, live view, result.

Two ways in, one code path:

- :func:`run_cell` is what a ``%%stream`` cell becomes in a kernel (see
  ``transformer.py``): a top-level ``await``, so the stream runs as a task on the
  kernel's loop while the kernel keeps handling the Stop button's messages, and
  Kernel > Interrupt cancels the cell's task.
- :func:`run_cell_sync` is the cell magic itself, used where a cell cannot await
  (terminal IPython, ``ip.run_cell_magic``): the same coroutine runs on the sync
  facade's loop, and Ctrl-C / Interrupt cancels it.

The cell builds its turn with ``Pipeline.stream`` before showing anything, so
the Stop button always has a stream to stop (``Stream.stop()`` is valid in every
phase, from any thread); Interrupt cancels the cell's task, which ends the
stream the same way. The partial text is kept and the session stores the turn
as interrupted. A Stop ends the cell normally; an Interrupt ends it in error
(one line, :class:`CellInterrupted`), so Run All stops there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..runtime.attachments import Attachment, as_attachment
from ..runtime.errors import ConfigurationError, MissingAPIKey, PkNotebookError, redact
from ..runtime.pipeline import Pipeline
from ..runtime.schema import OutputSchema, output_schema
from ..runtime.stream import Stream
from ..runtime.sync import run_sync
from ..runtime.tools import ToolSpec, as_tools
from ..runtime.types import UNSET, Result, StreamStatus, ToolCall
from . import context
from .defaults import defaults
from .interpolate import InterpolationError, Substitution, describe_substitutions, substitute
from .live import LiveOutput, approve_hint
from .options import CellOptions, cell_spec, parse_cell_options, usage_error
from .status import Note, format_status, note_for, notes_for

if TYPE_CHECKING:
    from .compare_view import CompareRun

logger = logging.getLogger("pk_notebook")


class CellInterrupted(KeyboardInterrupt):
    """Kernel > Interrupt ended a ``%%stream`` cell.

    Raised after the partial answer is shown, so the cell ends in error and a Run
    All queue stops there, as for any interrupted cell. A ``KeyboardInterrupt``
    because that is what an interrupt is; its traceback is one line.
    """

    MESSAGE = (
        "Interrupted: the answer was stopped; what arrived is kept above and in the "
        "session (marked stopped). Cells after this one were not run."
    )

    def __str__(self) -> str:
        return self.MESSAGE

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"CellInterrupted: {self.MESSAGE}"]


@dataclass(frozen=True)
class LastAnswer:
    """The most recent cell's answer, for ``%stream last`` (a reload loses the cell's view)."""

    result: Result
    bundle: dict[str, str]  # the final output, exactly as the cell showed it
    substituted: str = ""


_last: list[LastAnswer] = []


def print_help() -> None:
    """``%%stream --help`` (also with an empty cell body)."""
    print(cell_spec.__doc__)


def last_answer() -> LastAnswer | None:
    return _last[-1] if _last else None


def last_result() -> Result | None:
    last = last_answer()
    return last.result if last else None


@dataclass
class CellRun:
    """One execution of a ``%%stream`` cell. Build it with :meth:`prepare`."""

    shell: Any
    options: CellOptions
    prompt: str
    pipeline: Pipeline
    surface: str
    stream: Stream | None = None
    live: LiveOutput | None = None
    result: Result | None = None
    interrupted: bool = False
    # What ``{name}`` placeholders put into the prompt (see interpolate.describe_substitutions).
    substitutions: list[Substitution] = field(default_factory=list)
    # ``--tools``: the functions, described for the model.
    tools: tuple[ToolSpec, ...] = ()
    # Figures from ``{fig}`` and files from ``--attach``, sent with the prompt.
    attachments: tuple[Attachment, ...] = ()
    # ``--schema NAME``: the shape of the answer.
    schema: OutputSchema | None = None
    # ``--dry-run`` with a provider whose key is not set: the error a real run would
    # stop at (the dry run is built without the key and says how to set it).
    missing_key: MissingAPIKey | None = None

    # --- setup: everything that can be a usage error happens before any output ------

    @classmethod
    def prepare(
        cls, shell: Any, line: str, cell: str, *, sync: bool = False
    ) -> CellRun | CompareRun | None:
        """Parse, interpolate and pick the pipeline; None if only help was asked for."""
        options = parse_cell_options(line)
        if options.help:
            print_help()
            return None
        namespace = shell.user_ns if shell is not None else {}
        substitutions: list[Substitution] = []
        attachments: list[Attachment] = []
        if options.raw:
            prompt = cell
        else:
            settings = defaults()
            try:
                interpolated = substitute(
                    cell,
                    namespace,
                    max_chars=settings.max_var_chars,
                    max_rows=settings.max_var_rows,
                    errors=context.ERRORS,
                )
            except InterpolationError as exc:
                raise UsageError(str(exc)) from None
            except ConfigurationError as exc:  # a figure that cannot be saved as an image
                raise usage_error(exc) from None
            prompt, substitutions = interpolated.text, interpolated.substitutions
            attachments.extend(interpolated.attachments)
        for path in options.attach:
            try:
                attachments.append(as_attachment(path))
            except ConfigurationError as exc:
                raise UsageError(f"--attach {path}: {usage_error(exc).args[0]}") from None
        schema = _pick_schema(options.schema, namespace)
        if not prompt.strip():
            raise UsageError(
                "the cell has no prompt: write your question on the lines under %%stream"
            )
        if options.models:  # -m A -m B: several models side by side
            from .compare_view import CompareRun

            return CompareRun.build(
                shell, options, prompt.strip("\n"), substitutions, attachments, sync=sync
            )
        pipeline, missing_key = _pick_pipeline(options, namespace)
        tools = _pick_tools(options.tools, namespace)
        surface = options.live
        if sync and surface == "auto":
            from .live import detect_surface

            surface = detect_surface(shell)
            if surface == "widget":
                # A blocked cell cannot receive a button click: offer Interrupt only.
                surface = "display"
        return cls(
            shell,
            options,
            prompt.strip("\n"),
            pipeline,
            surface,
            substitutions=substitutions,
            tools=tools,
            attachments=tuple(attachments),
            schema=schema,
            missing_key=missing_key,
        )

    # --- the run ----------------------------------------------------------------------

    async def execute(self) -> Result | None:
        """Stream the answer into the cell; returns the result however it ended.

        With ``--dry-run``, shows what would be sent instead and returns None.
        """
        opts = self.options
        if opts.dry_run:
            from .dry_run import show_dry_run

            await show_dry_run(self)
            return None
        kwargs: dict[str, Any] = {"session": opts.session_id, "config": opts.config}
        if self.attachments:
            kwargs["attachments"] = self.attachments
        if self.schema is not None:
            kwargs["schema"] = self.schema
        if opts.timeout is not UNSET:
            kwargs["timeout"] = opts.timeout
        if opts.idle_timeout is not UNSET:
            kwargs["idle_timeout"] = opts.idle_timeout
        if self.tools:
            kwargs["tools"] = self.tools
            if opts.max_tool_rounds is not None:
                kwargs["max_tool_rounds"] = opts.max_tool_rounds
            if opts.approve:
                kwargs["approve"] = self.approve
        try:
            stream = self.stream = self.pipeline.stream(self.prompt, **kwargs)
        except ConfigurationError as exc:
            raise usage_error(exc) from None
        view: dict[str, Any] = dict(
            format=opts.format,
            lang=opts.lang,
            surface=self.surface,
            on_stop=self.request_stop,
            status=self.status_line,
            shell=self.shell,
            note=self.note(),
        )
        if self.schema is not None:
            from .partial_view import PartialObjectOutput

            live: LiveOutput = PartialObjectOutput(schema=self.schema, **view)
        else:
            live = LiveOutput(**view)
        self.live = live
        if opts.approve and not live.can_ask:
            live.note = "\n".join(p for p in (live.note, approve_hint(live.surface)) if p)
        live.show()
        error: BaseException | None = None
        try:
            async with stream:
                live.refresh_status()
                async for chunk in stream:
                    if chunk.reasoning:
                        live.push_reasoning(chunk.reasoning)
                    if chunk.tool is not None:
                        live.tool_event(chunk.tool)
                    if chunk.content:
                        live.push(chunk.content)
        except asyncio.CancelledError:
            # Kernel > Interrupt (or Ctrl-C): the stream has ended as STOPPED. Show the
            # partial answer like a Stop, then end the cell in error (below), so that
            # Run All stops here as it does for any interrupted cell.
            self.interrupted = True
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
        except PkNotebookError as exc:
            error = exc
        except Exception as exc:
            logger.exception("%%stream failed")
            error = exc
        result = await stream.wait_closed()
        self.result = result
        valid = result.status is StreamStatus.FINISHED and result.error is None
        if self.schema is not None:
            live.parsed, live.valid = result.parsed, valid  # type: ignore[attr-defined]
        bundle = live.finish(self.notes(result, error), result.tool_results)
        if opts.out:
            # With --schema, the validated object (None if the answer did not validate).
            value: Any = result
            if self.schema is not None:
                value = result.parsed if valid else None
            self.shell.user_ns[opts.out] = value
        _last[:] = [LastAnswer(result, bundle, describe_substitutions(self.substitutions))]
        if self.interrupted:
            raise CellInterrupted()
        return result

    async def approve(self, call: ToolCall) -> bool:
        """``--approve``: Run / Deny in the cell; no where buttons cannot be clicked."""
        live = self.live
        if live is None:
            return False
        return await live.ask_approval(call)

    def notes(self, result: Result, error: BaseException | None) -> list[Note]:
        """The notes under the answer; a Stop during a tool call says which tool."""
        notes = notes_for(result, error)
        if result.status is StreamStatus.STOPPED:
            cut = [r for r in result.tool_results if r.status in ("stopped", "abandoned")]
            if cut:
                names = ", ".join(dict.fromkeys(r.call.name for r in cut))
                detail = f"while {names} ran"
                if any(r.status == "abandoned" for r in cut):
                    detail += " (a sync function's thread is left to finish: Python cannot stop it)"
                detail += "; the rest was not generated."
                notes[:1] = [note_for(StreamStatus.STOPPED, detail)]
        if self.options.approve and self.live is not None and not self.live.can_ask:
            if any(r.status == "denied" for r in result.tool_results):
                notes.append(Note("⚠", "Note:", approve_hint(self.live.surface)))
        return notes

    def note(self) -> str:
        """The line under the status: what was substituted, and the files attached."""
        figures = {s.image for s in self.substitutions if s.image}
        attached = [a.describe() for a in self.attachments if a.describe() not in figures]
        lines = [describe_substitutions(self.substitutions)]
        if attached:
            lines.append("attached " + ", ".join(attached))
        return "\n".join(line for line in lines if line)

    def request_stop(self) -> None:
        """The Stop button: end the stream, keep the text. Safe from any thread, any phase.

        Unlike Kernel > Interrupt, Stop ends only this answer: the cell succeeds and
        a Run All goes on with the next cell.
        """
        if self.stream is not None:
            self.stream.stop()

    def status_line(self) -> str:
        stream = self.stream
        if stream is None:
            return "0.0 s · waiting for the first chunk"
        if stream.ended:
            return format_status(stream.result)
        line = format_status(stream, waiting=True)
        live = self.live
        if live is not None:
            running = live.parts.running()
            if running:
                line += " · running " + ", ".join(dict.fromkeys(c.name for c in running))
        return line


def _pick_pipeline(options: CellOptions, namespace: Any) -> tuple[Pipeline, MissingAPIKey | None]:
    """The cell's pipeline, and for a ``--dry-run`` without the provider's key, the
    missing-key error (the pipeline is then built without the key, never cached, never
    used to send: a real run still stops at the error)."""
    if options.pipeline:
        if options.pipeline not in namespace:
            raise UsageError(
                f"--pipeline {options.pipeline}: there is no variable {options.pipeline!r}"
            )
        pipeline = namespace[options.pipeline]
        if not isinstance(pipeline, Pipeline):
            raise UsageError(
                f"--pipeline {options.pipeline}: expected a pk_notebook Pipeline, "
                f"got {type(pipeline).__name__}"
            )
        if pipeline.closed:
            raise UsageError(f"--pipeline {options.pipeline}: that pipeline has been shut down")
        return pipeline, None
    try:
        return defaults().pipeline_for(options.provider), None
    except MissingAPIKey as exc:
        keyless = _keyless_pipeline(options.provider) if options.dry_run else None
        if keyless is None:
            raise UsageError(redact(str(exc))) from None
        return keyless, exc
    except ConfigurationError as exc:
        raise UsageError(redact(str(exc))) from None


def _keyless_pipeline(provider: str | None) -> Pipeline | None:
    """The pipeline :meth:`NotebookDefaults.pipeline_for` would build, with the key not
    required: for ``--dry-run``, which sends nothing but shows the provider's model and
    price. None if the provider cannot be built that way (the key error then stands)."""
    settings = defaults()
    if provider is None or provider == settings.provider:
        spec, config, options = settings.provider, settings.config, settings.provider_options
    else:
        spec, config, options = provider, replace(settings.config, model=None), {}
    try:
        return settings._build(spec, config, {**options, "require_key": False})
    except (TypeError, ConfigurationError):  # a provider without require_key=...
        return None


def _pick_schema(name: str | None, namespace: Any) -> OutputSchema | None:
    """``--schema NAME``: the model, dataclass, TypedDict or JSON-schema dict of that name."""
    if name is None:
        return None
    if name not in namespace:
        raise UsageError(
            f"--schema {name}: there is no {name!r} in this notebook; define it in a cell "
            f"above (e.g. class {name}(BaseModel): ...) and run that cell first"
        )
    try:
        return output_schema(namespace[name])
    except ConfigurationError as exc:
        raise UsageError(f"--schema {name}: {usage_error(exc).args[0]}") from None


def _pick_tools(names: tuple[str, ...], namespace: Any) -> tuple[ToolSpec, ...]:
    """``--tools a,b``: the functions of those names in the notebook, described for the model."""
    functions = []
    for name in names:
        if name not in namespace:
            raise UsageError(
                f"--tools {name}: there is no function {name!r} in this notebook; "
                f"define it in a cell above (def {name}(...): ...) and run that cell first"
            )
        value = namespace[name]
        if not callable(value):
            raise UsageError(
                f"--tools {name}: {name!r} is not a function (its type is "
                f"{type(value).__name__}); "
                "name a Python function (sync or async) the model may call"
            )
        functions.append(value)
    try:
        return as_tools(functions)
    except ConfigurationError as exc:
        raise usage_error(exc) from None


# --- entry points ---------------------------------------------------------------------


def _expand(shell: Any, line: str) -> str:
    # The same $name / {name} expansion IPython applies to every magic's line.
    try:
        return str(shell.var_expand(line, depth=0))
    except Exception:
        return line


async def run_cell(line: str, cell: str) -> None:
    """What a ``%%stream`` cell awaits in a kernel (written by the input transformer)."""
    from IPython import get_ipython

    shell = get_ipython()
    run = CellRun.prepare(shell, _expand(shell, line), cell)
    if run is not None:
        await run.execute()


def run_cell_sync(shell: Any, line: str, cell: str) -> Result | None:
    """The ``%%stream`` cell magic where the cell cannot await: block on the sync facade."""
    run = CellRun.prepare(shell, line, cell, sync=True)
    if run is None:
        return None
    done = threading.Event()

    async def main() -> Result | None:
        try:
            return await run.execute()
        finally:
            done.set()

    try:
        return run_sync(main())
    except CellInterrupted:
        raise
    except (KeyboardInterrupt, concurrent.futures.CancelledError):
        # Ctrl-C / Interrupt cancelled the run: it shows the partial text as stopped
        # on its way out; wait for that, then end the cell as interrupted.
        done.wait(10)
        raise CellInterrupted() from None
