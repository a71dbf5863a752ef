// The demo page: one prompt streamed over EventSource (GET /stream) or a WebSocket (/ws).
// Text is always inserted with textContent, never as HTML: answers are untrusted.
// Reasoning goes to a "Thinking" section (open while the model thinks, closed when the
// answer starts); each tool call of the server's tools is a line: name, arguments, outcome.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let source = null; // the running EventSource
  let socket = null; // the WebSocket, reused for several prompts
  let wsBusy = false;

  function setStatus(which, state, detail) {
    const el = $(which + "-status");
    el.dataset.state = state;
    el.textContent = detail ? state + " · " + detail : state;
  }

  function describe(result) {
    const parts = [];
    if (result.finish_reason) parts.push(result.finish_reason);
    if (result.usage) parts.push(result.usage.output_tokens + " tokens");
    if (typeof result.duration === "number") parts.push(result.duration.toFixed(2) + " s");
    return parts.join(", ");
  }

  function note(which, text) {
    const span = document.createElement("span");
    span.className = "note";
    span.textContent = "\n[" + text + "]";
    $(which + "-output").appendChild(span);
  }

  const MAX_OUTPUT = 300; // characters of a tool's output shown (the result has it all)

  function resetPanel(which) {
    $(which + "-output").textContent = "";
    const thinking = $(which + "-thinking");
    thinking.hidden = true;
    thinking.open = false;
    thinking.dataset.answered = "";
    thinking.querySelector("pre").textContent = "";
    thinking.querySelector("summary").textContent = "Thinking";
    const tools = $(which + "-tools");
    tools.hidden = true;
    tools.textContent = "";
  }

  function showReasoning(which, text) {
    const thinking = $(which + "-thinking");
    if (thinking.hidden) {
      thinking.hidden = false;
      thinking.open = true;
    }
    const pre = thinking.querySelector("pre");
    pre.appendChild(document.createTextNode(text));
    thinking.querySelector("summary").textContent =
      "Thinking · " + pre.textContent.length + " characters";
  }

  function showText(which, text) {
    const thinking = $(which + "-thinking");
    if (text && !thinking.hidden && !thinking.dataset.answered) {
      thinking.dataset.answered = "1";
      thinking.open = false; // the answer has started
    }
    $(which + "-output").appendChild(document.createTextNode(text));
  }

  function showTool(which, ev) {
    const list = $(which + "-tools");
    list.hidden = false;
    const key = ev.round + ":" + ev.index;
    let item = Array.from(list.children).find((li) => li.dataset.key === key);
    if (!item) {
      item = document.createElement("li");
      item.dataset.key = key;
      for (const part of ["name", "args", "out"]) {
        const span = document.createElement("span");
        span.className = part;
        item.appendChild(span);
      }
      list.appendChild(item);
    }
    item.dataset.kind = ev.kind;
    item.querySelector(".name").textContent = ev.name;
    if (ev.arguments !== undefined) item.querySelector(".args").textContent = "(" + ev.arguments + ")";
    let out = ev.kind === "running" ? "running…" : "";
    if (ev.output !== undefined) {
      out = ev.output.length > MAX_OUTPUT ? ev.output.slice(0, MAX_OUTPUT) + "…" : ev.output;
      out = (ev.kind === "result" ? "→ " : ev.kind + ": ") + out;
      if (typeof ev.duration === "number") out += "  (" + ev.duration.toFixed(2) + " s)";
    }
    if (out || ev.kind !== "arguments") item.querySelector(".out").textContent = out;
  }

  function updateStop() {
    $("stop").disabled = !(source || wsBusy);
  }

  function params() {
    return {
      prompt: $("prompt").value,
      session: $("session").value.trim(),
      token: $("token").value.trim(),
    };
  }

  // --- Server-Sent Events -------------------------------------------------------------

  let answerId = null; // the running SSE answer's id (its "start" event), for Stop

  function stopSSE(reason) {
    if (!source) return;
    source.close(); // leaving: the server keeps the answer for its grace period, then stops it
    source = null;
    answerId = null;
    if (reason) setStatus("sse", "stopped", reason);
    updateStop();
  }

  // Stop is explicit: POST /stream/{id}/stop stops the answer (on whichever server
  // process runs it) and keeps the partial text; the stream then ends with its result.
  async function requestStop() {
    const id = answerId;
    if (!id) { stopSSE("by you"); return; }
    const headers = {};
    const token = $("token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch("/stream/" + encodeURIComponent(id) + "/stop", {
        method: "POST",
        headers,
      });
      if (!response.ok) stopSSE("by you");
    } catch (err) {
      stopSSE("by you");
    }
  }

  function startSSE() {
    stopSSE();
    const p = params();
    const url = new URL("/stream", location.href);
    url.searchParams.set("prompt", p.prompt);
    if (p.session) url.searchParams.set("session", p.session);
    if (p.token) url.searchParams.set("access_token", p.token);
    resetPanel("sse");
    setStatus("sse", "connecting");
    const es = new EventSource(url.toString());
    source = es;
    updateStop();
    es.addEventListener("start", (event) => {
      if (source === es) answerId = JSON.parse(event.data).answer_id;
    });
    es.addEventListener("chunk", (event) => {
      const chunk = JSON.parse(event.data);
      if (chunk.index === 0 || $("sse-status").dataset.state === "reconnecting") {
        setStatus("sse", "streaming");
      }
      showText("sse", chunk.content);
    });
    es.addEventListener("reasoning", (event) => {
      setStatus("sse", "streaming");
      showReasoning("sse", JSON.parse(event.data).text);
    });
    es.addEventListener("tool", (event) => {
      setStatus("sse", "streaming");
      showTool("sse", JSON.parse(event.data));
    });
    es.addEventListener("result", (event) => {
      const result = JSON.parse(event.data);
      setStatus("sse", result.status, describe(result));
    });
    es.addEventListener("error", (event) => {
      if (event.data) {
        const error = JSON.parse(event.data).error;
        note("sse", error.type + ": " + error.message);
        return;
      }
      if (source !== es) return;
      // A connection error. Once the answer has an id, EventSource reconnects by
      // itself with Last-Event-ID and the server sends the rest of the same answer.
      // Refused before streaming (readyState CLOSED), or dropped before the answer
      // had an id (a reconnect would send the prompt again): give up.
      if (answerId && es.readyState === EventSource.CONNECTING) {
        setStatus("sse", "reconnecting", "the connection dropped; resuming");
        return;
      }
      const state = $("sse-status").dataset.state;
      if (state === "connecting" || state === "streaming" || state === "reconnecting") {
        setStatus("sse", "error", "the request failed or the connection dropped");
      }
      stopSSE();
    });
    es.onmessage = (event) => {
      if (event.data === "[DONE]" && source === es) stopSSE();
    };
  }

  // --- WebSocket --------------------------------------------------------------------

  function openSocket(token) {
    return new Promise((resolve, reject) => {
      if (socket && socket.readyState === WebSocket.OPEN) return resolve(socket);
      const url = new URL("/ws", location.href);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      if (token) url.searchParams.set("access_token", token);
      const ws = new WebSocket(url.toString());
      ws.onopen = () => { socket = ws; resolve(ws); };
      ws.onerror = () => reject(new Error("the WebSocket was refused (origin or token?)"));
      ws.onclose = () => {
        if (socket === ws) socket = null;
        if (wsBusy) { wsBusy = false; setStatus("ws", "error", "connection closed"); updateStop(); }
      };
      ws.onmessage = (event) => onSocketMessage(JSON.parse(event.data));
    });
  }

  function onSocketMessage(msg) {
    if (msg.type === "start") {
      setStatus("ws", "streaming");
    } else if (msg.type === "chunk") {
      showText("ws", msg.content);
    } else if (msg.type === "reasoning") {
      showReasoning("ws", msg.text);
    } else if (msg.type === "tool") {
      showTool("ws", msg);
    } else if (msg.type === "error") {
      note("ws", msg.error.type + ": " + msg.error.message);
      if (msg.final) { wsBusy = false; setStatus("ws", "error", msg.error.type); updateStop(); }
    } else if (msg.type === "result") {
      wsBusy = false;
      setStatus("ws", msg.result.status, describe(msg.result));
      if (msg.result.status === "stopped") note("ws", "stopped: the partial answer is kept");
      updateStop();
    }
  }

  async function startWS() {
    if (wsBusy) return;
    const p = params();
    resetPanel("ws");
    setStatus("ws", "connecting");
    try {
      const ws = await openSocket(p.token);
      wsBusy = true;
      updateStop();
      const message = { prompt: p.prompt };
      if (p.session) message.session = p.session;
      ws.send(JSON.stringify(message));
    } catch (err) {
      setStatus("ws", "error", err.message);
    }
  }

  function stopAll() {
    if (wsBusy && socket) socket.send(JSON.stringify({ type: "stop" }));
    if (source) requestStop();
  }

  $("sse-start").addEventListener("click", startSSE);
  $("ws-start").addEventListener("click", startWS);
  $("stop").addEventListener("click", stopAll);
})();
