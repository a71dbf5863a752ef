"""The chat's message box: a plain textarea that works wherever widgets render,
plus an optional keyboard enhancer (Enter sends, Shift+Enter adds a line).

Why two parts:

- ``ipywidgets.Textarea`` renders in every front end that renders widgets at
  all (JupyterLab, Notebook 7, VS Code, hubs whose server lacks anywidget), so
  the box can always be typed into and the Send button always works. It
  reports no key events, though, so it cannot tell Enter from Shift+Enter.
- :class:`KeyboardEnhancer` is a tiny anywidget module. When its front end
  loads, it finds the textarea next to it in the page and makes Enter send; it
  also shows a sent message as *pending* at once, while the kernel is busy with
  another cell. When its front end is missing (anywidget not installed where
  JupyterLab runs, an offline VS Code), the widget manager can only show an
  error for it; it sits in a hidden box, so nothing broken is visible, and the
  chat shows one line saying how to get Enter-to-send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

try:  # the enhancer is optional: without anywidget the chat still works with Send
    import anywidget
    import traitlets

    HAVE_ANYWIDGET = True
except ImportError:  # pragma: no cover - exercised in an environment without anywidget
    HAVE_ANYWIDGET = False

#: the hint under the box until the enhancer reports that it runs
HINT_NO_FRONT_END = (
    "Enter adds a line; click Send to send. For Enter-to-send, install anywidget "
    "where JupyterLab runs (pip install anywidget) and reload the page."
)
HINT_NO_PACKAGE = (
    "Enter adds a line; click Send to send. For Enter-to-send, pip install anywidget "
    "in this kernel's environment and where JupyterLab runs."
)
PLACEHOLDER_KEYS = "Message  (Enter sends, Shift+Enter adds a line)"
PLACEHOLDER_PLAIN = "Message"

_ESM = r"""
function render({ model, el }) {
  // The view may be rendered before it is attached under the chat: look again shortly.
  let cleanup = null;
  let timer = null;
  let tries = 0;
  const start = () => {
    const root = el.closest(".pk-chat");
    if (root) {
      cleanup = enhance(model, root);
    } else if (tries++ < 200) {
      timer = setTimeout(start, 50);
    }
  };
  start();
  return () => {
    if (timer !== null) clearTimeout(timer);
    if (cleanup) cleanup();
  };
}

function enhance(model, root) {
  // Hide the "click Send" hint at once; the kernel confirms when it hears "ready".
  root.classList.add("pk-chat-keys");
  let box = null;
  const busy = () => root.classList.contains("pk-chat-busy");
  const addPending = (text) => {
    const host = root.querySelector(".pk-chat-messages");
    if (!host) return;
    const item = document.createElement("div");
    item.className = "pk-msg pk-chat-pending";
    const bubble = document.createElement("div");
    bubble.className = "pk-bubble";
    bubble.textContent = text;  // text only, never HTML
    const note = document.createElement("div");
    note.className = "pk-chat-pending-note";
    note.textContent = "pending: the kernel is busy; it is sent when the kernel is free";
    item.append(bubble, note);
    host.appendChild(item);
  };
  const send = (text) => {
    model.send({ event: "submit", text });
    addPending(text);
  };
  const onKey = (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.ctrlKey ||
        event.metaKey || event.isComposing) {
      return;  // Shift+Enter: the browser inserts the newline
    }
    event.preventDefault();
    event.stopPropagation();
    const text = box.value;
    if (!text.trim() || busy()) return;
    send(text);
    box.value = "";
    box.dispatchEvent(new Event("input", { bubbles: true }));  // the Textarea syncs ""
  };
  const onClick = (event) => {
    // The Send button's click reaches the kernel only when it is free: show it now.
    if (box && event.target.closest && event.target.closest(".pk-chat-send") &&
        box.value.trim() && !busy()) {
      addPending(box.value);
    }
  };
  const attach = () => {
    const found = root.querySelector(".pk-chat-input textarea");
    if (!found || found === box) return;
    if (box) box.removeEventListener("keydown", onKey, true);
    box = found;
    box.setAttribute("data-lm-suppress-shortcuts", "true");
    box.addEventListener("keydown", onKey, true);
  };
  const onCustom = (msg) => {
    if (msg && msg.event === "received") {
      root.querySelectorAll(".pk-chat-pending").forEach((node) => node.remove());
    }
  };
  const observer = new MutationObserver(attach);
  observer.observe(root, { childList: true, subtree: true });
  root.addEventListener("click", onClick, true);
  model.on("msg:custom", onCustom);
  attach();
  model.send({ event: "ready" });
  return () => {
    observer.disconnect();
    root.removeEventListener("click", onClick, true);
    if (box) box.removeEventListener("keydown", onKey, true);
    model.off("msg:custom", onCustom);
  };
}
export default { render };
"""


if HAVE_ANYWIDGET:

    class KeyboardEnhancer(anywidget.AnyWidget):
        """Enter-to-send and pending messages for the chat's textarea (see the module doc)."""

        _esm = _ESM
        ready = traitlets.Bool(False, help="The front end runs (it said so).")

        def __init__(self, on_submit: Callable[[str], Any], on_ready: Callable[[], Any]) -> None:
            super().__init__()
            self._on_submit = on_submit
            self._on_ready = on_ready
            self.on_msg(self._on_front_end_msg)

        def _on_front_end_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
            if not isinstance(content, dict):
                return
            event = content.get("event")
            if event == "ready":
                self.ready = True
                self._on_ready()
            elif event == "submit":
                text = content.get("text")
                if isinstance(text, str) and text.strip():
                    self._on_submit(text)
                self.received()

        def received(self) -> None:
            """Tell the front end its pending messages have reached the kernel."""
            self.send({"event": "received"})

        def __repr__(self) -> str:
            return f"<KeyboardEnhancer ready={self.ready}>"


class MessageBox:
    """The composer's input parts: the textarea, the hidden enhancer, and the hint line.

    ``on_submit(text)`` is called for Enter (with the enhancer) and by :meth:`submit`;
    the Send button is wired by the chat and reads :attr:`value`.
    """

    def __init__(self, on_submit: Callable[[str], Any]) -> None:
        self._on_submit = on_submit
        self.box = widgets.Textarea(
            placeholder=PLACEHOLDER_PLAIN,
            rows=2,
            continuous_update=True,
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        self.box.add_class("pk-chat-input")
        self.hint = widgets.HTML(HINT_NO_FRONT_END if HAVE_ANYWIDGET else HINT_NO_PACKAGE)
        self.hint.add_class("pk-chat-hint")
        self.enhancer: Any = (
            KeyboardEnhancer(self._submitted, self._keys_ready) if HAVE_ANYWIDGET else None
        )
        # A box that shows nothing: where the enhancer's front end is missing, the
        # error placeholder the widget manager draws for it stays out of sight.
        self.hidden = widgets.Box(
            [self.enhancer] if self.enhancer is not None else [],
            layout=widgets.Layout(display="none"),
        )

    @property
    def value(self) -> str:
        return str(self.box.value)

    @value.setter
    def value(self, text: str) -> None:
        self.box.value = text

    @property
    def keys_ready(self) -> bool:
        """True once Enter-to-send runs in the front end."""
        return bool(self.enhancer is not None and self.enhancer.ready)

    def submit(self, text: str) -> None:
        """Act as if ``text`` had been typed and Enter pressed (tests, keyboard-free use)."""
        self._submitted(text)

    def received(self) -> None:
        if self.enhancer is not None:
            self.enhancer.received()

    def widgets(self) -> list[widgets.Widget]:
        return [self.box, self.hidden, self.hint]

    def close(self) -> None:
        for part in (self.enhancer, self.hidden, self.hint, self.box):
            if part is not None:
                part.close()

    def _submitted(self, text: str) -> None:
        self.box.value = ""
        self._on_submit(text)

    def _keys_ready(self) -> None:
        self.hint.layout.display = "none"
        self.box.placeholder = PLACEHOLDER_KEYS
