"""Delta transport for the live view: the browser renders the Markdown, the kernel sends only edits.

A Jupyter display can only be replaced whole, so the incremental live view
(:mod:`.blocks`) re-sends its unfinished tail (up to about 1.5 kB) on every
update. On a fast stream that is small next to what arrived; on a stream of a
few hundred characters a second it is many times more. Here the tail, and the
finished blocks too, live in one widget view whose front end keeps the text:

- the kernel sends *edits* of the Markdown the view holds, ``[keep, add]``
  (keep the first ``keep`` UTF-16 units, append ``add``): usually just the new
  text, plus the few characters the tail's rendering rules changed (a closed
  fence, held-back table row, escaped math delimiter; :mod:`.blocks`);
- when blocks finish, the finished Markdown is given the same way, relative to
  the tail the view already holds, so it costs what is new about it, not its
  length again;
- the browser renders with JupyterLab's own Markdown renderer (the widget
  manager's ``rendermime``: sanitizer, math typesetting, code highlighting,
  exactly as outputs are rendered), finished blocks once each and the tail on
  every update.

It is used only where it can work, and the kernel knows before it shows
anything: the view's front end says ``ready`` as soon as its model is created
(before any view is displayed), with whether it found a Markdown renderer.
Until then, or where that never comes (anywidget not installed where JupyterLab
runs, a front end whose widget manager has no ``rendermime`` such as VS Code or
Colab, a kernel that handles widget messages only after the cell: ipykernel <
7.4), the live view goes on with display updates as before; nothing broken is
ever shown. The final output does not change either way.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from .comms import close_widgets

logger = logging.getLogger("pk_notebook")

try:  # optional: without anywidget the live view uses display updates
    import anywidget
    import traitlets

    HAVE_ANYWIDGET = True
except ImportError:  # pragma: no cover - exercised in an environment without anywidget
    HAVE_ANYWIDGET = False

__all__ = ["HAVE_ANYWIDGET", "TailChannel", "common_prefix", "utf16_len"]

# The front end. A store per model (keyed by the synced ``key``: anywidget hands
# initialize() and render() different proxies of one model) holds the finished
# Markdown pieces and the tail; every view of the model renders from it, so a view
# created after some text arrived shows all of it.
_ESM = r"""
const stores = new Map();

function storeFor(model) {
  const key = model.get("key");
  let store = stores.get(key);
  if (!store) {
    store = { done: [], tail: "", views: new Set() };
    stores.set(key, store);
  }
  return store;
}

function edit(text, op) {
  // [keep, add]: the first `keep` UTF-16 units of `text`, then `add`
  if (!Array.isArray(op) || op.length !== 2) return text;
  const keep = Math.max(0, Math.min(text.length, Number(op[0]) || 0));
  return text.slice(0, keep) + String(op[1] ?? "");
}

function rendermimeOf(model) {
  const manager = model.widget_manager;
  const rm = manager && manager.rendermime;
  return rm && typeof rm.createRenderer === "function" && typeof rm.createModel === "function"
    ? rm : null;
}

export default {
  initialize({ model }) {
    const store = storeFor(model);
    const onMessage = (msg) => {
      if (!msg || typeof msg !== "object") return;
      if (msg.reset) {
        store.done = [];
        store.tail = "";
      }
      const finished = [];
      for (const op of Array.isArray(msg.d) ? msg.d : []) {
        // a finished piece: the tail's first `keep` units and `add`; the rest of the
        // tail stays, as the start of the next one
        const piece = edit(store.tail, op);
        store.tail = store.tail.slice(Math.max(0, Math.min(store.tail.length, Number(op[0]) || 0)));
        store.done.push(piece);
        finished.push(piece);
      }
      if (msg.t) store.tail = edit(store.tail, msg.t);
      for (const view of store.views) {
        try {
          view(finished, store.tail, !!msg.reset);
        } catch (error) {
          console.warn("pk_notebook live view", error);  // one broken view stops no other
        }
      }
    };
    model.on("msg:custom", onMessage);
    model.send({ ready: 1, markdown: rendermimeOf(model) !== null });
    return () => {
      model.off("msg:custom", onMessage);
      stores.delete(model.get("key"));
    };
  },

  render({ model, el }) {
    const store = storeFor(model);
    const rm = rendermimeOf(model);
    el.classList.add("pk-tail-view");
    const doneHost = document.createElement("div");
    const tailHost = document.createElement("div");
    tailHost.className = "pk-tail";
    el.append(doneHost, tailHost);

    const render = async (host, markdown, renderer) => {
      if (!rm) {  // never shown by the kernel without a renderer; text, not HTML, if it is
        host.textContent = markdown;
        return renderer;
      }
      if (!renderer) {
        renderer = rm.createRenderer("text/markdown");
        host.appendChild(renderer.node);
      }
      await renderer.renderModel(
        rm.createModel({ data: { "text/markdown": markdown }, trusted: false }));
      // A renderer typesets math itself only when attached the Lumino way; this one
      // is placed by hand, so typeset here (unclosed math was escaped by the kernel).
      if (rm.latexTypesetter && /[$\\]/.test(markdown)) {
        await rm.latexTypesetter.typeset(renderer.node);
      }
      return renderer;
    };

    // Renders run one after another, in order; a tail waiting behind others is
    // rendered once, with its latest text.
    let chain = Promise.resolve();
    let tailRenderer = null;
    let tailWanted = null;
    let renderers = [];
    const queue = (work) => {
      chain = chain.then(work).catch((error) => console.warn("pk_notebook live view", error));
    };
    const showTail = () => {
      queue(async () => {
        if (tailWanted === null) return;
        const text = tailWanted;
        tailWanted = null;
        tailRenderer = await render(tailHost, text, tailRenderer);
      });
    };
    const showDone = (pieces) => {
      for (const piece of pieces) {
        const host = document.createElement("div");
        doneHost.appendChild(host);
        queue(async () => { renderers.push(await render(host, piece, null)); });
      }
    };
    const view = (finished, tail, reset) => {
      if (reset) {
        doneHost.replaceChildren();
        for (const r of renderers) if (r && r.dispose) r.dispose();
        renderers = [];
      }
      showDone(finished);
      tailWanted = tail;
      showTail();
    };
    store.views.add(view);
    showDone(store.done);
    tailWanted = store.tail;
    showTail();
    return () => {
      store.views.delete(view);
      for (const r of renderers) if (r && r.dispose) r.dispose();
      if (tailRenderer && tailRenderer.dispose) tailRenderer.dispose();
    };
  },
};
"""


def utf16_len(text: str) -> int:
    """The length of ``text`` as JavaScript counts it (astral characters count twice)."""
    return len(text.encode("utf-16-le")) // 2


def common_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share (slice compares: C speed)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


if HAVE_ANYWIDGET:

    class TailWidget(anywidget.AnyWidget):
        """The live text's view (its front end is ``_ESM`` above)."""

        _esm = _ESM
        _css = """
        .pk-tail-view .jp-RenderedMarkdown { padding-right: 0; }
        """
        key = traitlets.Unicode("").tag(sync=True)


class TailChannel:
    """The kernel's side of one live text view: what the browser holds, and edits to it.

    Create it when the live view is shown (its model reaches the front end while
    the provider is still connecting); :attr:`usable` turns true when the front
    end has said it renders Markdown. Use from the event loop's thread; the
    ``ready`` message may arrive on another (a kernel subshell), so it only sets
    a flag.
    """

    def __init__(self) -> None:
        self.widget: Any = TailWidget(key=uuid.uuid4().hex)
        self._usable = threading.Event()
        self.widget.on_msg(self._on_message)
        self.tail = ""  # the tail the browser holds (Markdown)
        self._readies = 0
        self._resync = False  # the front end made the model again (a page reload)
        self.bytes_sent = 0  # characters of text in edits sent
        self.closed = False

    @property
    def usable(self) -> bool:
        return self._usable.is_set() and not self.closed

    @property
    def view(self) -> dict[str, Any]:
        """The display bundle of a view of this widget."""
        return {
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.widget.model_id,
            }
        }

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # From the browser: validate before trusting (a dict with a true "markdown").
        if isinstance(content, dict) and content.get("ready") and content.get("markdown") is True:
            self._readies += 1
            if self._readies > 1:
                # A reloaded page made the model anew, with nothing in it: the next
                # update starts it over from the current tail (the final output has it all).
                self._resync = True
            self._usable.set()

    def _edit(self, old: str, new: str) -> tuple[int, list[Any]]:
        """``[keep, add]`` turning ``old`` into ``new``, and ``keep`` in characters."""
        keep = common_prefix(old, new)
        add = new[keep:]
        self.bytes_sent += len(add)
        return keep, [utf16_len(old[:keep]) if keep else 0, add]

    def update(self, finished: list[str], tail: str, *, reset: bool = False) -> None:
        """Send finished Markdown pieces and the new tail, as edits of what the view holds.

        A finished piece is cut from the front of the tail the view holds (what it
        shares with it is not sent again); the rest of that tail is where the next
        tail's edit starts, so text that was already sent stays sent.
        """
        message: dict[str, Any] = {}
        if self._resync:
            self._resync = False
            reset = True
        if reset:
            message["reset"] = 1
            self.tail = ""
        if finished:
            ops = []
            for piece in finished:
                keep, op = self._edit(self.tail, piece)
                ops.append(op)
                self.tail = self.tail[keep:]
            message["d"] = ops
        if tail != self.tail or reset:
            message["t"] = self._edit(self.tail, tail)[1]
            self.tail = tail
        if message:
            self.widget.send(message)

    def close(self) -> None:
        """Close the widget's comm (and its layout's); safe to call twice."""
        if self.closed:
            return
        self.closed = True
        close_widgets([self.widget])
