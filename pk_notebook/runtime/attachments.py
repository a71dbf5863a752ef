"""Images and files sent with a prompt.

::

    await pipe.execute("user", "What does this chart show?", attachments=[fig])
    await pipe.execute("user", "Summarise this paper", attachments=["paper.pdf"])

:func:`as_attachment` turns what a notebook has at hand into an
:class:`Attachment` (bytes and a media type): a matplotlib ``Figure`` (saved as
PNG), a PIL image, an ``IPython.display.Image``, raw bytes with a media type, or
a path to an image or PDF. Objects are recognised by what they can do
(``savefig``, ``save``, ``data``), so the runtime imports none of those
libraries. Each provider turns attachments into its own content parts and
refuses, with a :class:`ConfigurationError` that says what to do, a kind of file
it does not take.

What the session keeps (the decision, also in the README): an attachment is
stored with its message when it is at most :data:`KEEP_IN_HISTORY_BYTES`
(256 kB; a chart or a screenshot), so a later turn can still refer to it and
a restarted kernel replays it. A larger one is sent with its turn only, and the
stored message keeps a one-line note in its place (name, type, size), so the
history stays small and honest about what the model saw.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

#: the largest file accepted at all (providers have their own, smaller caps)
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
#: attachments up to this size are kept in the session with their message
KEEP_IN_HISTORY_BYTES = 256 * 1024

_KINDS = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a message: its bytes, its media type and a name to show."""

    data: bytes
    mime_type: str
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise ConfigurationError("an attachment's data must be bytes")
        if self.mime_type not in _KINDS:
            raise ConfigurationError(
                f"attachments of type {self.mime_type!r} are not supported: send "
                f"{', '.join(_KINDS)}"
            )
        if len(self.data) > MAX_ATTACHMENT_BYTES:
            raise ConfigurationError(
                f"the attachment {self.name or self.mime_type} is {_size(len(self.data))}, "
                f"over the {_size(MAX_ATTACHMENT_BYTES)} limit: shrink or split it"
            )

    def __repr__(self) -> str:
        return f"Attachment({self.name or 'unnamed'!r}, {self.mime_type}, {_size(self.size)})"

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_image(self) -> bool:
        return self.mime_type.startswith("image/")

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{self.base64}"

    def describe(self) -> str:
        """One line for the history or a dry run: ``chart.png (image/png, 41 kB)``."""
        return f"{self.name or 'attachment'} ({self.mime_type}, {_size(self.size)})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mime_type": self.mime_type, "data": self.base64}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        return cls(
            base64.b64decode(data["data"]), str(data["mime_type"]), str(data.get("name", ""))
        )


def as_attachment(obj: Any, *, name: str | None = None) -> Attachment:
    """An :class:`Attachment` from a figure, an image, bytes or a path (see the module doc)."""
    if isinstance(obj, Attachment):
        return obj
    if isinstance(obj, (str, Path)):
        return _from_path(Path(obj), name)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], bytes):
        return Attachment(obj[0], str(obj[1]), name or "")
    if hasattr(obj, "savefig"):  # a matplotlib Figure
        import io

        buffer = io.BytesIO()
        obj.savefig(buffer, format="png", bbox_inches="tight")
        return Attachment(buffer.getvalue(), "image/png", name or "figure.png")
    if hasattr(obj, "save") and hasattr(obj, "mode") and hasattr(obj, "size"):  # PIL
        import io

        buffer = io.BytesIO()
        image = obj if obj.mode in ("RGB", "RGBA", "L", "LA", "P") else obj.convert("RGBA")
        image.save(buffer, format="PNG")
        return Attachment(buffer.getvalue(), "image/png", name or "image.png")
    data = getattr(obj, "data", None)
    if isinstance(data, bytes):  # IPython.display.Image
        mime = getattr(obj, "mimetype", None) or _sniff(data)
        if mime is None:
            raise ConfigurationError("this image's format is not PNG, JPEG, GIF or WebP")
        return Attachment(data, mime, name or f"image.{mime.split('/')[1]}")
    raise ConfigurationError(
        f"cannot attach a {type(obj).__name__}: attach a matplotlib figure, a PIL image, "
        "IPython.display.Image, (bytes, media type), or the path of an image or PDF"
    )


def as_attachments(items: Iterable[Any] | None) -> tuple[Attachment, ...]:
    if items is None:
        return ()
    if isinstance(items, (str, Path, Attachment)) or not isinstance(items, Iterable):
        items = [items]
    return tuple(as_attachment(item) for item in items)


def for_history(message: Any) -> Any:
    """``message`` as the session keeps it: large attachments replaced by a note."""
    files = message.attachments
    if not files or all(a.size <= KEEP_IN_HISTORY_BYTES for a in files):
        return message
    from dataclasses import replace

    kept = tuple(a for a in files if a.size <= KEEP_IN_HISTORY_BYTES)
    notes = [
        f"[attached to this message and not kept in the session: {a.describe()}]"
        for a in files
        if a.size > KEEP_IN_HISTORY_BYTES
    ]
    content = "\n".join([message.content, *notes]) if message.content else "\n".join(notes)
    return replace(message, content=content, attachments=kept)


def _from_path(path: Path, name: str | None) -> Attachment:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot attach {path}: {exc.strerror or exc}") from None
    mime = _sniff(data) or mimetypes.guess_type(path.name)[0] or ""
    if mime not in _KINDS:
        raise ConfigurationError(
            f"cannot attach {path.name}: it is {mime or 'of an unknown type'}; attach an "
            "image (PNG, JPEG, GIF, WebP) or a PDF, or paste text into the prompt"
        )
    return Attachment(data, mime, name or path.name)


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} kB"
    return f"{n / 1024 / 1024:.1f} MB"
