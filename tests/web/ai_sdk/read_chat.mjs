// Reads pk-notebook's POST /api/chat with the AI SDK's own client code: the
// DefaultChatTransport useChat uses (HTTP, SSE parsing, part validation) and
// readUIMessageStream (assembling the UIMessage). Prints {message, errors} as JSON.
//
//   node read_chat.mjs BASE_URL PROMPT [cut | again PROMPT2 DATA_URL]
//
// With "cut", the request is aborted after a few text deltas and the chat is
// resumed with reconnectToStream (GET /api/chat/{id}/stream), as
// useChat({resume: true}) does; the message printed is the resumed one.
// With "again", the chat goes on as useChat does: the history (the first
// question, the assistant message as assembled, tool parts included) and a
// second question with the file DATA_URL as a file part; the message printed is
// the second answer, the first is printed as "first".
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [base, prompt, mode] = process.argv.slice(2);
const headers = process.env.PK_TOKEN ? { Authorization: `Bearer ${process.env.PK_TOKEN}` } : {};
const transport = new DefaultChatTransport({ api: `${base}/api/chat`, headers });
const chatId = "chat-" + Math.random().toString(36).slice(2);
const errors = [];
const user = { id: "u1", role: "user", parts: [{ type: "text", text: prompt }] };

async function assemble(stream, limit) {
  let last = null;
  let deltas = 0;
  const counted = stream.pipeThrough(
    new TransformStream({
      transform(part, controller) {
        if (part.type === "text-delta") deltas += 1;
        controller.enqueue(part);
      },
    }),
  );
  for await (const message of readUIMessageStream({
    stream: counted,
    onError: (error) => errors.push(String(error)),
  })) {
    last = message;
    if (limit !== undefined && deltas >= limit) return last;
  }
  return last;
}

const abort = new AbortController();
const stream = await transport.sendMessages({
  chatId,
  messages: [user],
  trigger: "submit-message",
  messageId: undefined,
  abortSignal: abort.signal,
});
let message;
let cutAt = null;
if (mode === "cut") {
  const partial = await assemble(stream, 5);
  cutAt = partial.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
  abort.abort();
  const resumed = await transport.reconnectToStream({ chatId });
  if (resumed === null) throw new Error("nothing to resume");
  message = await assemble(resumed);
} else {
  message = await assemble(stream);
}
let first = null;
if (mode === "again") {
  first = message;
  const [question, url] = process.argv.slice(5);
  const next = {
    id: "u2",
    role: "user",
    parts: [
      { type: "text", text: question },
      { type: "file", mediaType: "image/png", filename: "dot.png", url },
    ],
  };
  message = await assemble(
    await transport.sendMessages({
      chatId,
      messages: [user, first, next],
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    }),
  );
}
console.log(JSON.stringify({ message, errors, cutAt, first }));
