"""How the chat widget looks: its stylesheet and the HTML of each transcript entry.

Kept apart from :mod:`pk_notebook.notebook.chat` (behaviour) so the look can be
changed without touching streaming code. Every colour and font is a JupyterLab
CSS variable, so the widget follows the light and dark themes; assistant text
carries ``jp-RenderedHTMLCommon`` so Markdown looks exactly like a Markdown
cell. All selectors are scoped under ``.pk-chat``. The answer's HTML comes from
:func:`~pk_notebook.notebook.markdown.render_markdown` (the same rules as the
cell: raw HTML shown as text, dangerous links not links, math kept as its TeX
source in ``.pk-math``), and the marker words from
:data:`~pk_notebook.notebook.status.STATUS_TEXT` (the same as the status line).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

from ..runtime.types import Message
from .markdown import escape_text, highlight_css, render_markdown
from .parts_view import TextBlock, TurnParts, group_turns, part_html, split_answer, visible
from .status import STATUS_TEXT, StatusText

SCOPE = ".pk-chat"

# Statuses that get a marker under the reply: every one with a note in the cell.
_MARKERS: dict[str, StatusText] = {
    status.value: text for status, text in STATUS_TEXT.items() if text.title
}

_CSS = """
.pk-chat {
  border: 1px solid var(--jp-border-color2);
  border-radius: 8px;
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-family: var(--jp-ui-font-family);
  overflow: hidden;
  max-width: 900px;
}
.pk-chat.jupyter-widgets, .pk-chat .jupyter-widgets { margin: 0; }
.pk-chat .jupyter-widget-html-content { line-height: normal; }
.pk-chat-style { display: none !important; }

/* header */
.pk-chat-header {
  align-items: center;
  padding: 6px 8px 6px 14px;
  border-bottom: 1px solid var(--jp-border-color2);
  background: var(--jp-layout-color2);
  gap: 6px;
}
.pk-chat-heading { flex: 1 1 auto; min-width: 0; }
.pk-chat-title {
  font-size: var(--jp-ui-font-size2);
  font-weight: 600;
  color: var(--jp-ui-font-color0);
}
.pk-chat-session {
  margin-left: 8px;
  font-size: var(--jp-ui-font-size0);
  font-family: var(--jp-code-font-family);
  color: var(--jp-ui-font-color2);
}
.pk-chat .pk-chat-tool.jupyter-button {
  height: 26px;
  line-height: 26px;
  padding: 0 10px;
  font-size: var(--jp-ui-font-size1);
  border-radius: 4px;
  background: transparent;
  color: var(--jp-ui-font-color1);
}
.pk-chat .pk-chat-tool.jupyter-button:hover:enabled {
  background: var(--jp-layout-color3);
  box-shadow: none;
}

/* transcript: column-reverse keeps the view pinned to the newest message */
.pk-chat-transcript {
  background: var(--jp-layout-color1);
  scrollbar-gutter: stable;
}
.pk-chat-messages { padding: 10px 16px 6px 16px; gap: 2px; }
.pk-chat-empty {
  padding: 36px 0;
  text-align: center;
  color: var(--jp-ui-font-color3);
  font-size: var(--jp-ui-font-size1);
}
.pk-msg { display: flex; flex-direction: column; margin: 6px 0; }
.pk-role {
  font-size: var(--jp-ui-font-size0);
  font-weight: 600;
  letter-spacing: 0.02em;
  text-transform: uppercase;
  color: var(--jp-ui-font-color2);
  margin: 0 2px 3px 2px;
}
.pk-msg-user, .pk-chat-pending { align-items: flex-end; }
.pk-msg-user .pk-bubble, .pk-chat-pending .pk-bubble {
  max-width: 78%;
  padding: 8px 12px;
  border-radius: 12px 12px 3px 12px;
  background: color-mix(in srgb, var(--jp-brand-color1) 15%, var(--jp-layout-color1));
  border: 1px solid color-mix(in srgb, var(--jp-brand-color1) 28%, var(--jp-layout-color1));
  color: var(--jp-content-font-color0);
  font-family: var(--jp-content-font-family);
  font-size: var(--jp-content-font-size1);
  line-height: 1.5;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
.pk-msg-assistant { align-items: stretch; }
.pk-msg-assistant .pk-role { color: var(--jp-brand-color1); }
.pk-msg-assistant .pk-answer {
  padding: 2px 4px 2px 12px;
  border-left: 3px solid color-mix(in srgb, var(--jp-brand-color1) 45%, transparent);
  min-height: 1.5em;
}
.pk-chat .pk-answer.jp-RenderedHTMLCommon { padding-right: 4px; overflow-wrap: anywhere; }
.pk-chat .pk-answer.jp-RenderedHTMLCommon > :first-child { margin-top: 0; }
.pk-chat .pk-answer.jp-RenderedHTMLCommon > :last-child { margin-bottom: 0; }
.pk-chat .pk-answer.jp-RenderedHTMLCommon pre {
  margin: 0.7em 0;
  background: var(--jp-cell-editor-background);
  border: 1px solid var(--jp-border-color2);
  border-radius: 4px;
  padding: 8px 10px;
  overflow-x: auto;
}
.pk-chat .pk-answer.jp-RenderedHTMLCommon :not(pre) > code {
  background: var(--jp-layout-color2);
  padding: 1px 4px;
  border-radius: 3px;
}
.pk-marker {
  display: inline-block;
  margin-top: 6px;
  padding: 1px 8px;
  border-radius: 10px;
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-warn-color0);
  background: color-mix(in srgb, var(--jp-warn-color1) 16%, transparent);
  border: 1px solid color-mix(in srgb, var(--jp-warn-color1) 40%, transparent);
  align-self: flex-start;
}
/* reasoning and tool calls (parts_view.py): small, muted, collapsible */
.pk-chat .pk-parts { margin: 0 0 4px 0; }
.pk-chat .pk-parts details {
  margin: 2px 0 4px 0;
  padding: 2px 8px;
  border: 1px solid var(--jp-border-color2);
  border-radius: 4px;
  background: var(--jp-layout-color2);
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color2);
}
.pk-chat .pk-parts summary { cursor: pointer; user-select: none; }
.pk-chat .pk-parts summary code { font-size: var(--jp-code-font-size); }
.pk-chat .pk-parts .pk-thinking-body { color: var(--jp-ui-font-color2); font-style: italic; }
.pk-chat .pk-parts pre {
  margin: 2px 0 6px 0;
  padding: 4px 8px;
  max-height: 16em;
  overflow: auto;
  white-space: pre-wrap;
  background: var(--jp-cell-editor-background);
  border-radius: 3px;
}
.pk-chat .pk-tool-label { font-weight: 600; margin-top: 4px; }
.pk-chat .pk-tool-note { font-style: italic; }
.pk-chat .pk-tool-error .pk-tool-mark { color: var(--jp-error-color1); }
.pk-chat .pk-tool-ok .pk-tool-mark { color: var(--jp-success-color1); }
.pk-chat-approve {
  align-items: center;
  gap: 8px;
  margin: 2px 0 8px 12px;
  padding: 4px 8px;
  border-left: 3px solid var(--jp-brand-color1);
  border-radius: 0 4px 4px 0;
  background: var(--jp-layout-color2);
}
.pk-chat-approve .pk-notice-text { font-size: var(--jp-ui-font-size1); }
.pk-chat-approve .jupyter-button { height: 26px; line-height: 26px; padding: 0 14px; }
.pk-chat .pk-math { overflow-wrap: anywhere; }
.pk-chat .pk-math-display {
  display: block;
  margin: 0.5em 0;
  text-align: center;
  white-space: pre-wrap;
  overflow-x: auto;
}
.pk-typing span {
  display: inline-block;
  width: 6px; height: 6px; margin-right: 4px;
  border-radius: 50%;
  background: var(--jp-ui-font-color3);
  animation: pk-chat-blink 1.2s infinite ease-in-out both;
}
.pk-typing span:nth-child(2) { animation-delay: 0.2s; }
.pk-typing span:nth-child(3) { animation-delay: 0.4s; }
@keyframes pk-chat-blink { 0%, 80%, 100% { opacity: 0.25; } 40% { opacity: 1; } }

/* an error, inline, with its Retry button */
.pk-chat-notice {
  align-items: center;
  gap: 8px;
  margin: 4px 0 8px 0;
  padding: 6px 8px 6px 12px;
  border-left: 3px solid var(--jp-error-color1);
  border-radius: 0 4px 4px 0;
  background: var(--jp-rendermime-error-background);
}
.pk-chat-notice .pk-notice-text {
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  white-space: normal;
}
.pk-chat-notice .jupyter-widget-html { flex: 1 1 auto; min-width: 0; }

/* composer */
.pk-chat-composer {
  align-items: flex-end;
  gap: 8px;
  padding: 10px 12px 8px 12px;
  border-top: 1px solid var(--jp-border-color2);
}
.pk-chat .pk-chat-action.jupyter-button {
  height: 34px;
  line-height: 34px;
  min-width: 72px;
  border-radius: 6px;
  font-size: var(--jp-ui-font-size1);
}
.pk-chat .pk-chat-action.jupyter-button:disabled { opacity: 0.45; }
.pk-chat .pk-chat-stop.jupyter-button:enabled {
  color: var(--jp-error-color1);
  background: var(--jp-layout-color1);
  box-shadow: inset 0 0 0 1px var(--jp-error-color1);
}
.pk-chat .pk-chat-input { flex: 1 1 auto; min-width: 0; margin: 0; }
.pk-chat .pk-chat-input textarea {
  box-sizing: border-box;
  min-height: 34px;
  max-height: 12em;
  resize: vertical;
  padding: 7px 10px;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
  line-height: 1.45;
  border-radius: 6px;
}
.pk-chat-hint {
  padding: 0 14px 4px 14px;
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-ui-font-color2);
}
/* the keyboard enhancer runs: Enter sends, so the "click Send" hint goes */
.pk-chat.pk-chat-keys .pk-chat-hint { display: none !important; }
.pk-chat-pending .pk-bubble { opacity: 0.6; }
.pk-chat-pending-note {
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-ui-font-color2);
  margin-top: 2px;
}

/* the saved copy of the transcript (shown where the live widget cannot be) */
.pk-chat-saved-messages { padding: 8px 14px; }
.pk-chat-saved-note {
  margin-left: 8px;
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-ui-font-color3);
}

/* footer */
.pk-chat-footer {
  padding: 0 14px 8px 14px;
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-ui-font-color2);
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
}
.pk-attachments { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 4px; }
.pk-attachments:last-child { margin-bottom: 0; }
.pk-thumb {
  max-width: 160px;
  max-height: 120px;
  border-radius: 6px;
  border: 1px solid var(--jp-border-color2);
  background: var(--jp-layout-color0);
  display: block;
}
.pk-file {
  display: inline-block;
  padding: 2px 8px;
  border-radius: 10px;
  border: 1px solid var(--jp-border-color2);
  background: var(--jp-layout-color0);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size0);
}
.pk-attach-strip {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 6px;
  padding: 4px 10px 0;
  color: var(--jp-ui-font-color2);
  font-size: var(--jp-ui-font-size0);
}
.pk-attach-strip .pk-thumb { max-width: 64px; max-height: 48px; }
.pk-chat-footer .pk-footer-status {
  float: right;
  margin-left: 12px;
  color: var(--jp-ui-font-color3);
}
"""


_TYPING = (
    '<span class="pk-typing" aria-label="waiting for the reply">'
    "<span></span><span></span><span></span></span>"
)


def stylesheet() -> str:
    """The ``<style>`` element every chat carries (scoped, so several chats share it safely)."""
    return f"<style>{_CSS}\n{highlight_css(SCOPE + ' .pk-answer')}</style>"


def header_html(title: str, session_id: str) -> str:
    return (
        f'<span class="pk-chat-title">{html.escape(title)}</span>'
        f'<span class="pk-chat-session" title="session id">{html.escape(session_id)}</span>'
    )


def empty_html() -> str:
    return '<div class="pk-chat-empty">No messages yet. Ask something below.</div>'


def user_html(text: str, attachments: Sequence[Any] = ()) -> str:
    """The user's message, with a thumbnail per attached image and a chip per file."""
    files = (
        f'<div class="pk-attachments">{attachments_html(attachments)}</div>' if attachments else ""
    )
    return (
        '<div class="pk-msg pk-msg-user"><div class="pk-role">You</div>'
        f'<div class="pk-bubble">{files}{escape_text(text)}</div></div>'
    )


#: the longest side of a thumbnail, in pixels
THUMBNAIL_PIXELS = 160
#: an image this small is shown as it is when it cannot be shrunk (no Pillow)
_INLINE_BYTES = 256 * 1024


def thumbnail_url(attachment: Any) -> str | None:
    """A small ``data:`` URL for an image attachment (None: show a chip instead).

    Shrunk with Pillow (which matplotlib brings along) so a transcript never
    carries a 20 MB photo; without Pillow a small image is shown as it is.
    """
    if not attachment.is_image:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(attachment.data)) as image:
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except Exception:
        if attachment.size <= _INLINE_BYTES:
            return str(attachment.data_url)
        return None


def attachments_html(attachments: Sequence[Any]) -> str:
    """Thumbnails (images) and chips (PDFs, or images too large to show), in order."""
    items = []
    for item in attachments:
        label = html.escape(item.describe())
        url = thumbnail_url(item)
        if url is not None:
            items.append(
                f'<img class="pk-thumb" src="{url}" alt="{html.escape(item.name or "image")}" '
                f'title="{label}">'
            )
        else:
            items.append(f'<span class="pk-file" title="{label}">📄 {label}</span>')
    return "".join(items)


def pending_attachments_html(attachments: Sequence[Any]) -> str:
    """The strip above the message box: what goes with the next message."""
    if not attachments:
        return ""
    count = len(attachments)
    return (
        f'<div class="pk-attach-strip"><span class="pk-attach-label">{count} attached to '
        f"your next message:</span>{attachments_html(attachments)}</div>"
    )


def assistant_html(
    text: str,
    *,
    status: str | None = None,
    streaming: bool = False,
    parts: TurnParts | None = None,
    said: str = "",
) -> str:
    """An assistant message: Markdown, a typing indicator before the first words, a marker
    if it did not finish (``status`` is a stored message status or a ``StreamStatus`` value).

    ``parts`` (reasoning, tool calls, and the text said before and between them, whose
    blocks index ``said``: the head of :func:`~.parts_view.split_answer`) come first, in
    order, reasoning and calls as collapsible sections (see :mod:`.parts_view`): live
    while ``streaming``, collapsed afterwards. ``text`` is the answer after them.
    """
    shown = parts_body_html(parts, said, live=streaming) if parts is not None else ""
    if text:
        body = render_markdown(text)
    elif streaming:
        body = _TYPING
    elif shown:
        body = ""
    else:
        body = '<p class="pk-empty-answer"><em>(no text)</em></p>'
    body = shown + body
    marker = ""
    if status is not None and status in _MARKERS:
        words = _MARKERS[status]
        marker = (
            f'<span class="pk-marker pk-marker-{status}" title="{html.escape(words.why)}">'
            f"{html.escape(words.icon)} {html.escape(words.label)}</span>"
        )
    return (
        '<div class="pk-msg pk-msg-assistant"><div class="pk-role">Assistant</div>'
        f'<div class="pk-answer jp-RenderedHTMLCommon">{body}</div>{marker}</div>'
    )


def parts_body_html(parts: TurnParts, said: str, *, live: bool = False) -> str:
    """A turn's parts in order: each run of thinking sections and tool cards in a
    ``pk-parts`` box, each stretch of text said between them (``said[start:end]``) as
    Markdown of its own, so no two stretches run together."""
    out: list[str] = []
    run: list[str] = []
    now = parts.clock()
    for part in visible(parts, said):
        if isinstance(part, TextBlock):
            if run:
                out.append(f'<div class="pk-parts">{"".join(run)}</div>')
                run = []
            out.append(render_markdown(said[part.start : part.end]))
        else:
            run.append(part_html(part, live=live, now=now))
    if run:
        out.append(f'<div class="pk-parts">{"".join(run)}</div>')
    return "".join(out)


def stored_assistant_html(
    message: Message, parts: TurnParts | None, text: str, answer: Callable[[str, str | None], str]
) -> str:
    """A stored turn's bubble (from :func:`~.parts_view.group_turns`): what was said
    before and between its tool calls, its parts, then ``answer(answer_text, status)``."""
    head, reply = split_answer(parts, text)
    return assistant_html(
        answer(reply, message.status), status=message.status, parts=head, said=text
    )


def _as_is(text: str, _status: str | None) -> str:
    return text


def marker_label(status: str) -> str:
    """The short word shown for an interrupted message's status (``"stopped"``...)."""
    words = _MARKERS.get(status)
    return words.label if words else status


def notice_html(message: str) -> str:
    return f'<div class="pk-notice-text">{html.escape(message)}</div>'


def approval_html(name: str, arguments: str) -> str:
    """The question above a tool call's Run / Deny buttons."""
    from .parts_view import one_line

    return (
        f'<div class="pk-notice-text">Run <strong>{html.escape(name)}</strong> '
        f"<code>{html.escape(one_line(arguments))}</code>?</div>"
    )


def footer_html(summary: str, status: str = "") -> str:
    right = f'<span class="pk-footer-status">{html.escape(status)}</span>' if status else ""
    return f"{right}<span>{html.escape(summary)}</span>"


def saved_transcript_html(
    messages: Sequence[Message],
    *,
    title: str,
    session_id: str,
    live_class: str,
    answer: Callable[[str, str | None], str] | None = None,
) -> str:
    """The conversation as static HTML, for the saved notebook, nbconvert and GitHub.

    It is a second output under the live chat, updated after every finished turn.
    While the live widget is on the page (its root carries ``live_class``) a CSS
    rule hides this copy; where the widget cannot be drawn (a reopened notebook,
    an HTML export) the copy is what the reader sees.
    """
    items = []
    for message, parts, text in group_turns(messages):
        if message.role == "user":
            items.append(user_html(message.content, message.attachments))
        elif message.role == "assistant":
            items.append(stored_assistant_html(message, parts, text, answer or _as_is))
    body = "".join(items) or empty_html()
    # While the live chat is on the page, hide this copy; where it is not (the kernel
    # is gone), hide the widget's own output above the copy instead, which can only
    # say "Loading widget..." or "model not found".
    hide = (
        f"<style>.jp-OutputArea:has(.{live_class}) .{live_class}-saved "
        "{ display: none !important; }"
        f".jp-OutputArea-child:has(+ .jp-OutputArea-child .{live_class}-saved)"
        f":not(:has(.{live_class})) {{ display: none !important; }}</style>"
    )
    return (
        f"{stylesheet()}{hide}"
        f'<div class="pk-chat pk-chat-saved {live_class}-saved">'
        f'<div class="pk-chat-header">{header_html(title, session_id)}'
        '<span class="pk-chat-saved-note">saved transcript</span></div>'
        f'<div class="pk-chat-messages pk-chat-saved-messages">{body}</div></div>'
    )
