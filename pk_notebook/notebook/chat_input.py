"""The chat's message box: a textarea where Enter sends and Shift+Enter adds a line.

Why a custom widget: ``ipywidgets.Textarea`` swallows key events in the browser
without reporting any of them (only ``Text`` reports Enter, and it holds a
single line), so no combination of stock widgets can tell Enter from
Shift+Enter. anywidget runs the few lines of JavaScript below as an ES module
in JupyterLab, Notebook 7 and VS Code, with no bundle to build.

The front end sends ``{"event": "submit", "text": ...}`` on Enter and clears
itself; the draft is synced to ``value`` as it is typed, so a Send button on
the Python side sends what is in the box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

_ESM = r"""
function render({ model, el }) {
  const box = document.createElement("textarea");
  box.className = "pk-chat-input";
  box.rows = 1;
  box.spellcheck = true;
  box.setAttribute("aria-label", "Message");
  // JupyterLab must not treat keys typed here as notebook shortcuts.
  box.setAttribute("data-lm-suppress-shortcuts", "true");
  const maxRows = () => Math.max(1, model.get("max_rows"));
  const fit = () => {
    box.style.height = "auto";
    const style = getComputedStyle(box);
    const line = parseFloat(style.lineHeight) || 20;
    const pad = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
    const border = parseFloat(style.borderTopWidth) + parseFloat(style.borderBottomWidth);
    const limit = line * maxRows() + pad + border;
    box.style.height = Math.min(box.scrollHeight + border, limit) + "px";
    box.style.overflowY = box.scrollHeight + border > limit ? "auto" : "hidden";
  };
  const push = () => { model.set("value", box.value); model.save_changes(); };
  const fromModel = () => {
    if (box.value !== model.get("value")) { box.value = model.get("value"); fit(); }
    box.placeholder = model.get("placeholder");
    box.disabled = model.get("disabled");
  };
  const onKey = (event) => {
    event.stopPropagation();
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.ctrlKey ||
        event.metaKey || event.isComposing) {
      return;  // Shift+Enter: the browser inserts the newline
    }
    event.preventDefault();
    const text = box.value;
    if (!text.trim() || model.get("busy") || model.get("disabled")) return;
    model.send({ event: "submit", text });
    box.value = "";
    push();
    fit();
  };
  const onInput = () => { push(); fit(); };
  const onCustom = (msg) => { if (msg && msg.event === "focus") box.focus(); };
  box.addEventListener("keydown", onKey);
  box.addEventListener("keypress", (e) => e.stopPropagation());
  box.addEventListener("input", onInput);
  model.on("change:value", fromModel);
  model.on("change:placeholder", fromModel);
  model.on("change:disabled", fromModel);
  model.on("msg:custom", onCustom);
  fromModel();
  el.classList.add("pk-chat-input-host");
  el.appendChild(box);
  requestAnimationFrame(fit);
  return () => {
    model.off("change:value", fromModel);
    model.off("change:placeholder", fromModel);
    model.off("change:disabled", fromModel);
    model.off("msg:custom", onCustom);
  };
}
export default { render };
"""

_CSS = r"""
.pk-chat-input-host { display: flex; flex: 1 1 auto; min-width: 0; }
.pk-chat-input {
  flex: 1 1 auto;
  box-sizing: border-box;
  width: 100%;
  resize: none;
  margin: 0;
  padding: 7px 10px;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
  line-height: 1.45;
  color: var(--jp-ui-font-color0);
  background: var(--jp-input-background, var(--jp-layout-color1));
  border: var(--jp-border-width, 1px) solid var(--jp-input-border-color, var(--jp-border-color1));
  border-radius: 6px;
  outline: none;
}
.pk-chat-input:focus {
  border-color: var(--jp-input-active-border-color, var(--jp-brand-color1));
  box-shadow: 0 0 0 1px var(--jp-input-active-border-color, var(--jp-brand-color1));
}
.pk-chat-input::placeholder { color: var(--jp-ui-font-color3); }
.pk-chat-input:disabled { opacity: 0.6; }
"""


class ChatInput(anywidget.AnyWidget):
    """A multi-line message box: Enter submits, Shift+Enter inserts a newline."""

    _esm = _ESM
    _css = _CSS

    value = traitlets.Unicode("", help="The text in the box, synced as it is typed.").tag(sync=True)
    placeholder = traitlets.Unicode(
        "Message  (Enter sends, Shift+Enter adds a line)", help="Shown while the box is empty."
    ).tag(sync=True)
    disabled = traitlets.Bool(False, help="Refuse typing (e.g. no kernel loop to answer).").tag(
        sync=True
    )
    busy = traitlets.Bool(False, help="A reply is streaming: Enter keeps the text in the box.").tag(
        sync=True
    )
    max_rows = traitlets.Int(8, help="The box grows with its text up to this many lines.").tag(
        sync=True
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._submit_handlers: list[Callable[[str], Any]] = []
        self.on_msg(self._on_front_end_msg)

    def on_submit(self, callback: Callable[[str], Any], remove: bool = False) -> None:
        """Call ``callback(text)`` when Enter is pressed (``remove=True`` unregisters it)."""
        if remove:
            self._submit_handlers.remove(callback)
        else:
            self._submit_handlers.append(callback)

    def submit(self, text: str) -> None:
        """Act as if ``text`` had been typed and Enter pressed (tests, keyboard-free use)."""
        self.value = ""
        for callback in list(self._submit_handlers):
            callback(text)

    def focus(self) -> None:
        self.send({"event": "focus"})

    def _on_front_end_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            text = content.get("text")
            if isinstance(text, str) and text.strip():
                self.submit(text)

    def __repr__(self) -> str:
        return f"<ChatInput chars={len(self.value)} busy={self.busy}>"
