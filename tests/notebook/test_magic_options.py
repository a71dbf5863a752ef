"""%%stream / %stream without a kernel: options, usage errors, line commands, the transformer.

These run in IPython's test shell (no kernel), where %%stream uses the blocking
path and prints the answer as it arrives.
"""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError

from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.notebook import defaults as defaults_module
from pk_notebook.notebook.live import Note, close_open_fence, render_bundle
from pk_notebook.notebook.options import parse_cell_options
from pk_notebook.notebook.transformer import RUNNER, rewrite_stream_cell
from pk_notebook.providers import MockProvider
from pk_notebook.runtime.types import UNSET


def cell_error(ip: Any, cell: str) -> str:
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


# --- options --------------------------------------------------------------------------


def test_long_and_short_options_parse_the_same() -> None:
    long = parse_cell_options(
        "--session trip --provider openai:gpt-4o-mini "
        "--model m --system 'Be brief' --temperature 0.2 "
        "--max-tokens 50 --timeout 60 --idle-timeout none "
        "--format code --lang python --out ans --no-history"
    )
    short = parse_cell_options(
        "-s trip -p openai:gpt-4o-mini -m m --system "
        "'Be brief' -t 0.2 --max-tokens 50 --timeout 60 "
        "--idle-timeout none -f code --lang python -o ans --no-history"
    )
    assert long == short
    assert long.session == "trip" and long.session_id is None  # --no-history: a one-off call
    assert (
        long.config is not None
        and long.config.temperature == 0.2
        and long.config.system == "Be brief"
    )
    assert (long.timeout, long.idle_timeout) == (60.0, None)


def test_defaults_and_lang_implying_code() -> None:
    options = parse_cell_options("")
    assert options.format == "markdown" and options.config is None and options.timeout is UNSET
    assert parse_cell_options("--lang sql").format == "code"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("--bogus", "unrecognized arguments: --bogus", id="unknown-option"),
        pytest.param("-t hot", "invalid float value", id="bad-float"),
        pytest.param("-t 3", "temperature must be between 0 and 2", id="temperature-range"),
        pytest.param("--max-tokens 0", "must be at least 1", id="max-tokens"),
        pytest.param("--timeout -1", "seconds must be positive", id="timeout"),
        pytest.param("-f pdf", "invalid choice", id="format"),
        pytest.param("-f text --lang python", "--lang goes with -f code", id="lang-without-code"),
        pytest.param("-o 'not a name'", "is not a Python variable name", id="out-var"),
        pytest.param("-o class", "is not a Python variable name", id="out-keyword"),
        pytest.param("-s ''", "non-empty", id="empty-session"),
        pytest.param("--pipeline p -p mock", "exclude each other", id="pipeline-and-provider"),
        pytest.param("--system 'unbalanced", "cannot read the options", id="quotes"),
    ],
)
def test_bad_options_are_one_line_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_cell_options(line)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- the cell magic without a kernel ---------------------------------------------------


def test_cell_streams_prints_and_stores_the_result(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["city"] = "Lisbon"
    result = ip.run_cell(
        "%%stream -s trip -o answer\nPlan a day in {city}. Keep it to 5 bullet points."
    )
    assert result.success
    out = capsys.readouterr().out
    assert out.startswith("## A day in Lisbon") and out.endswith("night walk home.\n")
    answer = ip.user_ns["answer"]
    assert answer.status.value == "finished" and answer.session_id == "trip"
    assert answer.messages[-2].content == "Plan a day in Lisbon. Keep it to 5 bullet points."


def test_usage_errors_of_the_cell(ip: Any) -> None:
    assert "unrecognized arguments" in cell_error(ip, "%%stream --nope\nhi")
    assert "no prompt" in cell_error(ip, "%%stream\n \n\t\n")
    assert "no variable 'missing'" in cell_error(ip, "%%stream\nabout {missing}")
    assert "unknown provider 'nosuch'" in cell_error(ip, "%%stream -p nosuch\nhi")
    assert "no variable 'nope'" in cell_error(ip, "%%stream --pipeline nope\nhi")
    ip.user_ns["not_a_pipe"] = 3
    assert "expected a pk_notebook Pipeline" in cell_error(ip, "%%stream --pipeline not_a_pipe\nhi")


def test_raw_sends_braces_untouched(ip: Any) -> None:
    provider = MockProvider.scripted("ok")
    ip.user_ns["pipe"] = Pipeline(ProviderMiddleware(provider))
    assert ip.run_cell(
        "%%stream --raw --pipeline pipe\nKeep {undefined} and {{x}} as typed"
    ).success
    assert provider.calls[-1].request.prompt == "Keep {undefined} and {{x}} as typed"
    assert ip.run_cell('%%stream --pipeline pipe\nJSON {"a": 1} and {{x}}').success
    assert provider.calls[-1].request.prompt == 'JSON {"a": 1} and {x}'


def test_options_reach_the_provider(ip: Any) -> None:
    provider = MockProvider.scripted("one two three four five six")
    ip.user_ns["pipe"] = Pipeline(ProviderMiddleware(provider))
    ip.run_cell(
        "%%stream --pipeline pipe -m tiny --system 'Be brief' -t 0.5 --max-tokens 3 -o r\nhi"
    )
    request = provider.calls[-1].request
    assert (request.config.model, request.config.system, request.config.temperature) == (
        "tiny",
        "Be brief",
        0.5,
    )
    result = ip.user_ns["r"]
    assert result.text == "one two three" and result.finish_reason == "length"


def test_sessions_continue_and_no_history_stays_out(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = MockProvider.scripted("first", "second")
    ip.user_ns["pipe"] = Pipeline(ProviderMiddleware(provider))
    ip.run_cell("%%stream --pipeline pipe -s s1\nhello")
    ip.run_cell("%%stream --pipeline pipe -s s1\nagain")
    assert [m.content for m in provider.calls[-1].request.messages] == ["hello", "first", "again"]
    ip.run_cell("%%stream --pipeline pipe -s s1 --no-history\naside")
    assert [m.content for m in provider.calls[-1].request.messages] == ["aside"]
    messages = ip.user_ns["pipe"].sync.run(ip.user_ns["pipe"].state_store.load("s1"))
    assert [m.content for m in messages] == ["hello", "first", "again", "second"]


def test_help(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert ip.run_cell("%%stream --help").success
    text = capsys.readouterr().out
    for option in (
        "--session",
        "-s",
        "--provider",
        "--format",
        "--out",
        "--no-history",
        "{{name}}",
    ):
        assert option in text
    ip.run_line_magic("stream", "")
    assert "%stream config" in capsys.readouterr().out


# --- the line magic --------------------------------------------------------------------


def test_config_shows_and_sets_defaults(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic(
        "stream",
        "config --provider mock --model demo -t 0.3 "
        "--max-tokens 99 --timeout 20 --idle-timeout none",
    )
    shown = capsys.readouterr().out
    assert (
        "provider       mock" in shown
        and "temperature    0.3" in shown
        and "idle_timeout   -" in shown
        and "max_var_chars  2000" in shown
    )
    settings = defaults_module.defaults()
    assert (
        settings.config.model == "demo"
        and settings.config.max_tokens == 99
        and settings.timeout == 20.0
    )
    with pytest.raises(UsageError, match="unknown provider 'nosuch'"):
        ip.run_line_magic("stream", "config --provider nosuch")
    with pytest.raises(UsageError, match="unknown store"):
        ip.run_line_magic("stream", "config --store ftp://x")
    ip.run_line_magic("stream", "config --reset")
    assert defaults_module.defaults().config.model is None


def test_sessions_history_reset_last_providers(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("stream", "sessions")
    assert "no sessions" in capsys.readouterr().out
    ip.run_cell("%%stream -s notes\nWrite a haiku about tea")
    capsys.readouterr()
    ip.run_line_magic("stream", "sessions")
    assert "notes" in capsys.readouterr().out
    ip.run_line_magic("stream", "history")  # the last cell's session
    history = capsys.readouterr().out
    assert "[user]\nWrite a haiku about tea" in history and "[assistant]" in history
    ip.run_line_magic("stream", "last")
    assert "finished (stop)" in capsys.readouterr().out
    ip.run_line_magic("stream", "providers")
    listing = capsys.readouterr().out
    assert "mock" in listing and "OPENAI_API_KEY" in listing
    ip.run_line_magic("stream", "reset notes")
    assert "forgotten" in capsys.readouterr().out
    with pytest.raises(UsageError, match="unknown %stream command 'hello'"):
        ip.run_line_magic("stream", "hello world")


def test_api_keys_never_show(
    ip: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Built at run time so that secret scanners do not flag this obviously fake key.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "test-1234567890abcdefSECRET")
    ip.run_line_magic("stream", "providers")
    ip.run_line_magic("stream", "config")
    assert "SECRET" not in capsys.readouterr().out


# --- the transformer and the final rendering --------------------------------------------


def test_transformer_leaves_cells_alone_outside_a_kernel() -> None:
    lines = ["%%stream -s trip\n", "Plan a day in {city}.\n"]
    assert rewrite_stream_cell(lines) == lines  # no kernel loop to await on
    assert rewrite_stream_cell(["%%streams\n", "x\n"]) == ["%%streams\n", "x\n"]
    assert rewrite_stream_cell(["x = 1\n"]) == ["x = 1\n"]
    helped = rewrite_stream_cell(["%%stream --help\n"])
    assert helped == [f"__import__({RUNNER!r}, fromlist=['print_help']).print_help()\n"]


def test_transformer_rewrites_into_an_await_in_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from pk_notebook.notebook import transformer

    monkeypatch.setattr(transformer, "can_await", lambda shell=None: True)
    body = "Code: {'a': 1}\n'''quotes''' and \\ backslashes\n"
    (line,) = rewrite_stream_cell(["%%stream -s 'my trip'\n", *body.splitlines(keepends=True)])
    assert line.startswith("await __import__(")
    # The arguments survive as exact string literals.
    import ast

    call = ast.parse(line.strip(), mode="eval" if False else "exec", feature_version=(3, 8)).body[0]
    assert isinstance(call, ast.Expr)
    args = call.value.value.args  # type: ignore[attr-defined]
    assert [ast.literal_eval(a) for a in args] == ["-s 'my trip'", body]


def test_final_rendering_is_deterministic_and_closes_open_code() -> None:
    bundle = render_bundle(
        "Text\n```python\nx = 1", notes=[Note("■", "Stopped:", "partial answer.")]
    )
    assert (
        bundle["text/markdown"] == "Text\n```python\nx = 1\n```\n\n> ■ **Stopped:** partial answer."
    )
    assert bundle["text/plain"] == "Text\n```python\nx = 1\n\n■ Stopped: partial answer."
    assert render_bundle("a*b", format="text") == {"text/plain": "a*b"}
    assert (
        render_bundle("print(1)", format="code", lang="python")["text/markdown"]
        == "```python\nprint(1)\n```"
    )
    assert close_open_fence("```\nx\n```\n") == "```\nx\n```\n"
    note = Note("⚠", "Failed:", "bad *key* [x]")
    assert note.markdown() == "> ⚠ **Failed:** bad \\*key\\* \\[x\\]"


@pytest.mark.redis
def test_config_store_redis_keeps_sessions_in_redis(
    ip: Any, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    import uuid

    from pk_notebook.sessions import RedisStore

    session = f"magic-{uuid.uuid4().hex[:8]}"
    ip.run_line_magic("stream", f"config --store {redis_server.url}")
    assert redis_server.url in capsys.readouterr().out
    assert ip.run_cell(f"%%stream -s {session}\nHello, my name is Lin").success
    assert ip.run_cell(f"%%stream -s {session}\nWhat is my name?").success
    assert "Your name is Lin" in capsys.readouterr().out
    ip.run_line_magic("stream", f"history {session}")
    assert "Hello, my name is Lin" in capsys.readouterr().out
    # Another kernel (a second store object on the same server) sees the conversation.
    from pk_notebook.runtime.sync import run_sync

    other = RedisStore.from_url(redis_server.url)
    stored = run_sync(other.load(session))
    run_sync(other.aclose())
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]


# --- issue 13: interpolation, one-line errors, --pipeline for the line commands ----------


def test_config_help_lists_every_setting(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("stream", "config --help")
    text = capsys.readouterr().out
    for setting in defaults_module.defaults().describe():
        assert "--" + setting.replace("_", "-") in text, setting
    assert "--reset" in text and "--max-var-chars N" in text


@pytest.mark.parametrize("command", ["sessions", "history", "reset"])
def test_line_commands_have_help(ip: Any, capsys: pytest.CaptureFixture[str], command: str) -> None:
    ip.run_line_magic("stream", f"{command} --help")
    assert "--pipeline VAR" in capsys.readouterr().out


def test_cell_values_are_capped_and_the_limit_is_a_setting(ip: Any) -> None:
    provider = MockProvider.scripted("ok", "ok")
    ip.user_ns["pipe"] = Pipeline(ProviderMiddleware(provider))
    ip.user_ns["table"] = "x" * 48_311
    assert ip.run_cell("%%stream --pipeline pipe\nSummarise {table}").success
    assert provider.calls[-1].request.prompt == (
        "Summarise " + "x" * 2000 + "…[cut: 2,000 of 48,311 characters]"
    )
    ip.run_line_magic("stream", "config --max-var-chars 10")
    assert defaults_module.defaults().max_var_chars == 10
    assert ip.run_cell("%%stream --pipeline pipe\nSummarise {table}").success
    assert provider.calls[-1].request.prompt == (
        "Summarise xxxxxxxxxx…[cut: 10 of 48,311 characters]"
    )
    with pytest.raises(UsageError, match="must be at least 1"):
        ip.run_line_magic("stream", "config --max-var-chars 0")


def test_pasted_code_in_a_cell_is_sent_as_typed_and_prose_is_reported(ip: Any) -> None:
    from pk_notebook.notebook.interpolate import describe_substitutions
    from pk_notebook.notebook.runner import CellRun

    provider = MockProvider.scripted("ok")
    ip.user_ns.update(
        pipe=Pipeline(ProviderMiddleware(provider)), name="Ada", i=3, df="frame", city="Rome"
    )
    cell = (
        "In {city}, why does this fail?\n"
        "```python\n"
        'print(f"Hello {name}, row {i}: {df}")\n'
        "```\n"
        "and what does `{name!r}` or `{name}` print?\n"
    )
    assert ip.run_cell("%%stream --pipeline pipe\n" + cell).success
    assert provider.calls[-1].request.prompt == "In Rome" + cell.strip("\n")[len("In {city}") :]
    run = CellRun.prepare(ip, "--pipeline pipe", cell)
    assert run is not None
    assert describe_substitutions(run.substitutions) == "substituted {city} (4 chars)"
    raw = CellRun.prepare(ip, "--pipeline pipe --raw", cell)
    assert raw is not None and raw.substitutions == [] and raw.prompt == cell.strip("\n")


def test_store_down_is_one_line_for_every_line_command(ip: Any) -> None:
    ip.run_line_magic("stream", "config --store redis://127.0.0.1:1/0")
    for command in ("sessions", "history some-session", "reset some-session"):
        result = ip.run_cell(f"%stream {command}")
        error = result.error_in_exec
        assert type(error) is UsageError, (command, error)  # exactly: IPython shows no traceback
        text = str(error)
        assert "redis://127.0.0.1:1/0" in text and "\n" not in text
        assert "%stream config --store memory" in text


def test_line_commands_take_a_pipeline(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    provider = MockProvider.scripted("first answer")
    ip.user_ns["pipe"] = Pipeline(ProviderMiddleware(provider))
    assert ip.run_cell("%%stream --pipeline pipe -s side\nhello").success
    capsys.readouterr()
    ip.run_line_magic("stream", "sessions")
    assert "no sessions in the memory store" in capsys.readouterr().out
    ip.run_line_magic("stream", "sessions --pipeline pipe")
    assert "side" in capsys.readouterr().out
    ip.run_line_magic("stream", "history side --pipeline pipe")
    assert "[assistant]\nfirst answer" in capsys.readouterr().out
    ip.run_line_magic("stream", "history --pipeline pipe")  # the last cell's session
    assert "[user]\nhello" in capsys.readouterr().out
    ip.run_line_magic("stream", "reset side --pipeline pipe")
    assert "forgotten" in capsys.readouterr().out
    ip.run_line_magic("stream", "sessions --pipeline pipe")
    assert "no sessions in pipe's store" in capsys.readouterr().out
    ip.user_ns["notpipe"] = 42
    with pytest.raises(UsageError, match="there is no variable 'nope'"):
        ip.run_line_magic("stream", "sessions --pipeline nope")
    with pytest.raises(UsageError, match="expected a pk_notebook Pipeline, got int"):
        ip.run_line_magic("stream", "history x --pipeline notpipe")
    with pytest.raises(UsageError, match="unrecognized arguments"):
        ip.run_line_magic("stream", "reset a b")


def test_chat_with_a_missing_key_is_one_line(ip: Any) -> None:
    ip.run_line_magic("stream", "config --provider openai")
    result = ip.run_cell("from pk_notebook import Chat\nchat = Chat()")
    error = result.error_in_exec
    assert type(error) is UsageError, error
    assert "OPENAI_API_KEY" in str(error) and "\n" not in str(error)
    assert "chat" not in ip.user_ns


def test_transformer_reads_a_chain_of_wrapper_magics(monkeypatch: pytest.MonkeyPatch) -> None:
    import ast

    from pk_notebook.notebook import transformer

    monkeypatch.setattr(transformer, "can_await", lambda shell=None: True)
    (line,) = rewrite_stream_cell(
        ["%%time\n", "\n", "%%capture out --no-stderr\n", "%%stream -s trip\n", "Go {x}\n"]
    )
    call = ast.parse(line.strip()).body[0].value.value  # type: ignore[attr-defined]
    assert call.func.attr == "run_wrapped"
    assert [ast.literal_eval(a) for a in call.args] == [
        [("time", ""), ("capture", "out --no-stderr")],
        "-s trip",
        "Go {x}\n",
    ]
    # A magic that owns its cell keeps the %%stream line as text.
    kept = ["%%writefile notes.md\n", "%%stream\n", "hi\n"]
    assert rewrite_stream_cell(kept) == kept
    assert rewrite_stream_cell(["%%time\n", "x = 1\n"]) == ["%%time\n", "x = 1\n"]


def test_timeit_above_stream_is_refused_without_a_kernel(ip: Any) -> None:
    message = cell_error(ip, "%%timeit\n%%stream\nhi")
    assert message.startswith("%%timeit would send the prompt") and "%%time" in message


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0 ns"),
        (3.2e-7, "320 ns"),
        (0.000412, "412 μs"),
        (0.0123, "12.3 ms"),
        (1.2345, "1.23 s"),
        (125.0, "2min 5s"),
        (3725.0, "1h 2min 5s"),
        (3605.5, "1h 5s"),
    ],
)
def test_time_is_shown_like_ipython_shows_it(seconds: float, shown: str) -> None:
    from pk_notebook.notebook.transformer import format_seconds

    assert format_seconds(seconds) == shown


def test_one_m_with_a_provider_spec_picks_that_provider_as_a_comparison_would() -> None:
    options = parse_cell_options("-m openai:gpt-4o-mini")
    assert options.provider == "openai:gpt-4o-mini" and options.config is None
    # a model of -p or of a pipeline stays a model, and so does Ollama's name:tag
    assert parse_cell_options("-p ollama -m llama3.2:3b").config.model == "llama3.2:3b"
    tagged = parse_cell_options("-m llama3.2:3b")
    assert tagged.provider is None and tagged.config.model == "llama3.2:3b"
    assert parse_cell_options("--pipeline pipe -m mock:x").config.model == "mock:x"


def test_one_m_naming_openai_without_a_key_stops_at_the_key_not_on_the_mock(
    ip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    message = cell_error(ip, "%%stream -m openai:gpt-4o-mini\nhello")
    assert "OPENAI_API_KEY" in message
