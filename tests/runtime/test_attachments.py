"""attachments=: what becomes an attachment, what is refused, what a session keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pk_notebook import Attachment, ConfigurationError, Delta, Finish, Pipeline, as_attachment
from pk_notebook.runtime.attachments import KEEP_IN_HISTORY_BYTES, MAX_ATTACHMENT_BYTES
from pk_notebook.sessions import SQLiteStore

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"x" * 64


class Seer:
    """Answers with what it was sent, and records the request."""

    name = "seer"
    model = "seer-1"

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def stream(self, request: Any):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        files = request.messages[-1].attachments
        yield Delta(f"{len(files)} file(s)")
        yield Finish("stop")

    async def aclose(self) -> None:
        pass


def test_files_are_recognised_by_their_bytes(tmp_path: Path) -> None:
    (tmp_path / "chart.bin").write_bytes(PNG)  # a misleading suffix: the bytes decide
    (tmp_path / "paper.pdf").write_bytes(PDF)
    assert as_attachment(tmp_path / "chart.bin").mime_type == "image/png"
    paper = as_attachment(str(tmp_path / "paper.pdf"))
    assert (paper.mime_type, paper.name, paper.is_image) == ("application/pdf", "paper.pdf", False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigurationError, match=r"notes\.txt: it is text/plain"):
        as_attachment(tmp_path / "notes.txt")
    with pytest.raises(ConfigurationError, match=r"cannot attach .*missing\.png"):
        as_attachment(tmp_path / "missing.png")
    with pytest.raises(ConfigurationError, match=r"over the 20\.0 MB limit"):
        Attachment(PNG + b"\x00" * MAX_ATTACHMENT_BYTES, "image/png", "huge.png")
    with pytest.raises(ConfigurationError, match="cannot attach a dict"):
        as_attachment({"not": "a file"})


def test_a_matplotlib_figure_pil_image_and_ipython_image_become_pngs() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import Image
    from PIL import Image as PILImage

    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([1, 2, 3])
    from_figure = as_attachment(figure)
    plt.close(figure)
    assert from_figure.mime_type == "image/png" and from_figure.data.startswith(b"\x89PNG")
    pil = PILImage.new("RGB", (8, 8), "red")
    assert as_attachment(pil).data.startswith(b"\x89PNG")
    assert as_attachment(Image(data=from_figure.data)).mime_type == "image/png"


async def test_attachments_reach_the_provider_with_the_message(tmp_path: Path) -> None:
    seer = Seer()
    async with Pipeline(seer) as pipe:
        result = await pipe.execute("user", "look", attachments=[(PNG, "image/png")])
    assert result.text == "1 file(s)"
    sent = seer.requests[0].messages[-1]
    assert sent.attachments[0].data == PNG and sent.content == "look"


async def test_the_session_keeps_small_files_and_a_note_for_large_ones(tmp_path: Path) -> None:
    big = Attachment(PNG + b"\x00" * KEEP_IN_HISTORY_BYTES, "image/png", "photo.png")
    small = Attachment(PNG, "image/png", "icon.png")
    seer = Seer()
    async with Pipeline(seer, state_store=SQLiteStore(tmp_path / "s.sqlite3")) as pipe:
        await pipe.execute_with_context("s", "user", "look", attachments=[small, big])
        # the model saw both files with this turn
        assert [a.name for a in seer.requests[0].messages[-1].attachments] == [
            "icon.png",
            "photo.png",
        ]
        stored = (await pipe.state_store.load("s"))[0]
        await pipe.state_store.aclose()
    assert stored.attachments == (small,)  # kept, bytes intact, through SQLite
    assert stored.content.startswith("look\n")
    assert "not kept in the session: photo.png (image/png, 256 kB)" in stored.content
