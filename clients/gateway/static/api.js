// The gateway's public API as the page uses it: the Responses and Conversations endpoints, and Chatter's own
// (/chatter/v1: docs/HTTP.md). A reply is followed as server-sent events and resumed after a reload or a dropped
// connection from the sequence_number it had, exactly: each event's number is where its text ends.

export const store = {
  get token() { return localStorage.getItem("chatter.token"); },
  set token(value) { value ? localStorage.setItem("chatter.token", value) : localStorage.removeItem("chatter.token"); },
  // the session open: this tab's (a reload keeps it, whatever another tab opened since), else the one opened last
  // in any tab (a new tab starts there)
  get conversation() {
    return sessionStorage.getItem("chatter.conversation") ?? localStorage.getItem("chatter.conversation");
  },
  set conversation(value) {
    for (const storage of [sessionStorage, localStorage]) {
      value ? storage.setItem("chatter.conversation", value) : storage.removeItem("chatter.conversation");
    }
  },
  // the reply streaming when the page went away: its id, the last event number had, and the texts so far, in one
  // item, so that they always agree (per tab: another tab follows it from its own number)
  get inflight() { return JSON.parse(sessionStorage.getItem("chatter.inflight") || "null"); },
  set inflight(value) {
    value ? sessionStorage.setItem("chatter.inflight", JSON.stringify(value)) : sessionStorage.removeItem("chatter.inflight");
  },
};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${store.token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch { /* not OpenAI's shape */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function json(path, options = {}) {
  return (await api(path, options)).json();
}

export const own = (path) => `/chatter/v1${path}`;

export function send(method, path, body) {
  return json(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
}

// A session's active branch, every page of it
export async function sessionMessages(sessionId) {
  const all = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: "100", ...(after ? { after } : {}) });
    const page = await json(own(`/sessions/${encodeURIComponent(sessionId)}/messages?${query}`));
    all.push(...page.data);
    if (!page.has_more) return all;
    after = page.last_id;
  }
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

const ENDS = ["response.completed", "response.incomplete", "response.failed"];

// The reply being followed, written to the tab's storage at most every SAVE_MS and when the page goes away (a
// record per event copied a 100k reply's text thousands of times); an older record is as exact, only earlier.
const SAVE_MS = 250;
let following = null;
let saveTimer = null;

function saveInflight() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (following) {
    const { id, seq, text, reasoning, session } = following;
    store.inflight = { id, seq, text, reasoning, session };
  }
}
addEventListener("pagehide", saveInflight);

// One reply to its end. ``state``: {id, seq, text, reasoning, session}; ``on``: {created(response), text(delta),
// reasoning(delta), end(response), reconnecting(words or "")}. A dropped connection (a network drop, a gateway
// restarted) is retried from the last event had, with backoff; ``state.stopped`` ends the following.
export async function followReply(state, on, first = null) {
  following = state;
  try {
    return await following_(state, on, first);
  } finally {
    following = null;
    clearTimeout(saveTimer);
    saveTimer = null;
  }
}

async function following_(state, on, first) {
  let wait = 500;
  let response = first;
  for (;;) {
    try {
      if (!response) {
        response = await api(`/v1/responses/${state.id}?stream=true&starting_after=${state.seq}`,
                             { signal: state.controller?.signal });
      }
      on.reconnecting("");
      for await (const event of serverEvents(response)) {
        state.seq = event.sequence_number;
        if (event.type === "response.created") {
          state.id = event.response.id;
          on.created(event.response);
        } else if (event.type === "response.output_text.delta") {
          state.text += event.delta;
          on.text(event.delta);
        } else if (event.type === "response.reasoning_text.delta") {
          state.reasoning += event.delta;
          on.reasoning(event.delta);
        } else if (ENDS.includes(event.type)) {
          on.end(event.response);
          return event.response;
        }
        if (state.id && !saveTimer) saveTimer = setTimeout(saveInflight, SAVE_MS);
      }
      throw new Error("the connection ended early");
    } catch (error) {
      if (state.stopped) return null;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
      on.reconnecting(`Reconnecting… (${error.message})`);
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, 10_000);
      response = null;
    }
  }
}
