"""The cell's note, the chat's marker and the status line say the same thing: one table."""

from __future__ import annotations

import pytest

from pk_notebook import StreamStatus
from pk_notebook.notebook import chat_view
from pk_notebook.notebook.status import STATUS_TEXT, format_status, notes_for
from pk_notebook.runtime.errors import ServerError
from pk_notebook.runtime.types import Result

ENDED = [s for s in StreamStatus if s not in (StreamStatus.STREAMING, StreamStatus.FINISHED)]


@pytest.mark.parametrize("status", ENDED, ids=lambda s: s.value)
def test_cell_chat_and_status_line_read_one_row(status: StreamStatus) -> None:
    words = STATUS_TEXT[status]
    result = Result(text="partial", status=status, error=ServerError("the server failed"))

    line = format_status(result)
    (note,) = notes_for(result)
    marker = chat_view.assistant_html("partial", status=status.value)

    assert line.endswith(words.label)
    assert (note.icon, note.title) == (words.icon, words.title)
    assert f"{words.icon} {words.label}</span>" in marker
    assert f'title="{words.why}"' in marker
    assert chat_view.marker_label(status.value) == words.label


def test_finished_answers_get_no_marker_and_no_note() -> None:
    result = Result(text="done", status=StreamStatus.FINISHED, finish_reason="stop")
    assert notes_for(result) == []
    assert "pk-marker" not in chat_view.assistant_html("done", status=None)
    assert format_status(result).endswith("finished (stop)")


def test_notes_keep_their_committed_wording() -> None:
    # The tutorials' saved outputs (compared by nbval) carry these exact lines.
    stopped = notes_for(Result(text="x", status=StreamStatus.STOPPED))
    assert [n.markdown() for n in stopped] == [
        "> ■ **Stopped:** partial answer; the rest was not generated."
    ]
    cut = notes_for(Result(text="x", status=StreamStatus.FINISHED, finish_reason="length"))
    assert cut[0].markdown() == (
        "> ⚠ **Cut short:** the answer reached its token limit (finish reason: length); "
        "raise --max-tokens."
    )
