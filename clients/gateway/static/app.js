// Chatter in a browser: the gateway's public API only (the Responses and Conversations endpoints), a reply
// streamed as server-sent events and resumed after a reload or a dropped connection from the sequence_number it
// had, exactly (each event's number is where its text ends: README, "The HTTP face").
//
// Untrusted text (a reply, a user's message) is rendered by markdown-it with raw HTML off (it shows as text) and
// its link validation (no javascript: links); links open with rel="noopener noreferrer". The page's
// Content-Security-Policy forbids inline scripts.
import markdownit from "/page/vendor/markdown-it.min.js";
import hljs from "/page/vendor/highlight.min.js";

const md = markdownit({
  html: false,
  linkify: false,
  highlight: (code, lang) => {
    if (lang && hljs.getLanguage(lang)) {
      return `<pre><code class="hljs language-${md.utils.escapeHtml(lang)}">${hljs.highlight(code, { language: lang }).value}</code></pre>`;
    }
    return "";  // markdown-it escapes it
  },
});
const linkOpen = md.renderer.rules.link_open || ((tokens, i, options, env, self) => self.renderToken(tokens, i, options));
md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  tokens[i].attrSet("rel", "noopener noreferrer");
  tokens[i].attrSet("target", "_blank");
  return linkOpen(tokens, i, options, env, self);
};

const $ = (id) => document.getElementById(id);
const store = {
  get token() { return localStorage.getItem("chatter.token"); },
  set token(value) { value ? localStorage.setItem("chatter.token", value) : localStorage.removeItem("chatter.token"); },
  get conversation() { return localStorage.getItem("chatter.conversation"); },
  set conversation(value) {
    value ? localStorage.setItem("chatter.conversation", value) : localStorage.removeItem("chatter.conversation");
  },
  // the reply streaming when the page went away: its id, the last event number had, and the texts so far, in
  // one item, so that they always agree
  get inflight() { return JSON.parse(sessionStorage.getItem("chatter.inflight") || "null"); },
  set inflight(value) {
    value ? sessionStorage.setItem("chatter.inflight", JSON.stringify(value)) : sessionStorage.removeItem("chatter.inflight");
  },
};

function banner(words) {
  const el = $("banner");
  el.textContent = words || "";
  el.hidden = !words;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
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

// ------------------------------------------------------------------ the transcript

function messageElement(role) {
  const el = document.createElement("article");
  el.className = `message ${role}`;
  el.setAttribute("aria-label", role === "user" ? "You" : "Reply");
  $("transcript").append(el);
  return el;
}

function renderMarkdown(el, text) {
  el.dataset.raw = text;  // the text as it came, for anyone who wants it whole (the tests compare it)
  const body = el.querySelector(".body") || el.appendChild(Object.assign(document.createElement("div"), { className: "body" }));
  body.innerHTML = md.render(text);
  for (const pre of body.querySelectorAll("pre")) {
    const copy = Object.assign(document.createElement("button"), { type: "button", className: "copy", textContent: "Copy" });
    copy.setAttribute("aria-label", "Copy the code");
    copy.addEventListener("click", () => navigator.clipboard.writeText(pre.querySelector("code")?.textContent || ""));
    pre.append(copy);
  }
}

function showUser(text) {
  renderMarkdown(messageElement("user"), text);
}

class Reply {
  constructor(text = "", reasoning = "") {
    this.el = messageElement("assistant");
    this.thinking = this.el.appendChild(Object.assign(document.createElement("div"), { className: "thinking" }));
    this.status = this.el.appendChild(Object.assign(document.createElement("div"), { className: "status" }));
    this.text = text;
    this.reasoning = reasoning;
    this.pending = false;
    this.draw();
  }

  add(text, reasoning) {
    this.text += text;
    this.reasoning += reasoning;
    if (!this.pending) {  // at most one render a frame
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  draw() {
    this.thinking.textContent = this.reasoning;
    renderMarkdown(this.el, this.text);
    this.el.append(this.status);
    const transcript = $("transcript");
    transcript.scrollTop = transcript.scrollHeight;
  }

  end(response) {
    this.draw();
    this.el.dataset.status = response.status;
    this.status.textContent = response.status === "completed" ? "" : response.status;
    const usage = response.usage;
    if (usage) {
      const c = usage.chatter || {};
      $("stats").textContent = `${usage.output_tokens} tokens (${c.output_tokens_source || "estimated"})`
        + (c.tok_per_s != null ? ` · ${c.tok_per_s} tok/s` : "") + (c.ttft_ms != null ? ` · TTFT ${c.ttft_ms} ms` : "")
        + ` · ${response.status}`;
    }
    $("announce").textContent = `Reply ${response.status}.`;
  }
}

// ------------------------------------------------------------------ streaming

let current = null;  // {id, reply, controller}

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

async function follow(response, state) {
  // the events of one reply, applied to its element; the inflight record kept with each
  for await (const event of serverEvents(response)) {
    state.seq = event.sequence_number;
    if (event.type === "response.created") {
      state.id = event.response.id;
      store.conversation = event.response.conversation.id;
    } else if (event.type === "response.output_text.delta") {
      state.reply.add(event.delta, "");
    } else if (event.type === "response.reasoning_text.delta") {
      state.reply.add("", event.delta);
    } else if (["response.completed", "response.incomplete", "response.failed"].includes(event.type)) {
      state.reply.end(event.response);
      if (event.response.error) banner(event.response.error.message);
      return true;
    }
    store.inflight = { id: state.id, seq: state.seq, text: state.reply.text, reasoning: state.reply.reasoning };
  }
  return false;  // the connection ended before the reply did
}

async function stream(state, first) {
  // the reply to its end: a dropped connection is retried from the last event had, with backoff
  setBusy(true);
  current = state;
  let wait = 500;
  let response = first;
  try {
    for (;;) {
      try {
        if (!response) {
          response = await api(`/v1/responses/${state.id}?stream=true&starting_after=${state.seq}`);
        }
        if (await follow(response, state)) break;
        throw new Error("the connection ended early");
      } catch (error) {
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
        banner(`Reconnecting… (${error.message})`);
        await new Promise((resolve) => setTimeout(resolve, wait));
        wait = Math.min(wait * 2, 10_000);
        response = null;
      }
      banner("");
    }
    store.inflight = null;
  } catch (error) {
    banner(error.message);
  } finally {
    current = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("stop").disabled = !busy;
  $("send").disabled = busy;
}

async function send(text) {
  banner("");
  showUser(text);
  const body = { input: text, stream: true, background: true };  // background: a reload does not stop it
  if (store.conversation) body.conversation = store.conversation;
  else if ($("system").value.trim()) body.instructions = $("system").value;
  const state = { id: null, seq: -1, reply: new Reply() };
  let response;
  try {
    response = await api("/v1/responses", { method: "POST", body: JSON.stringify(body) });
  } catch (error) {
    state.reply.el.remove();
    banner(error.message);
    return;
  }
  await stream(state, response);
}

async function stop() {
  if (current?.id) {
    try { await api(`/v1/responses/${current.id}/cancel`, { method: "POST" }); } catch (error) { banner(error.message); }
  }
}

// ------------------------------------------------------------------ a session, as it stands

async function load() {
  $("transcript").replaceChildren();
  $("stats").textContent = "";
  const conversation = store.conversation;
  const inflight = store.inflight;
  if (conversation) {
    let after = null;
    const skip = inflight ? `msg_${inflight.id.slice(5)}` : null;
    for (;;) {
      const query = new URLSearchParams({ order: "asc", limit: "100", ...(after ? { after } : {}) });
      let page;
      try {
        page = await (await api(`/v1/conversations/${conversation}/items?${query}`)).json();
      } catch (error) {
        if (error.status === 404) { store.conversation = null; store.inflight = null; return; }
        throw error;
      }
      for (const item of page.data) {
        if (item.id === skip || item.type !== "message") continue;
        const text = item.content.map((part) => part.text || "").join("");
        if (item.role === "user") showUser(text);
        else new Reply(text).end({ status: item.status === "completed" ? "completed" : item.status });
      }
      if (!page.has_more) break;
      after = page.last_id;
    }
  }
  if (inflight) {  // the reply that was streaming: what the page had, then the rest from its number on
    await stream({ id: inflight.id, seq: inflight.seq, reply: new Reply(inflight.text, inflight.reasoning) }, null);
  }
}

async function signIn(token) {
  store.token = token;
  try {
    await api("/v1/models");
  } catch (error) {
    store.token = null;
    banner(error.status === 401 ? "That token does not sign in." : error.message);
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").textContent = "signed in";
  $("message").focus();
  try { await load(); } catch (error) { banner(error.message); }
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("signout").addEventListener("click", () => {
  store.token = null;
  store.conversation = null;
  store.inflight = null;
  location.reload();
});
$("new").addEventListener("click", () => {
  store.conversation = null;
  store.inflight = null;
  $("transcript").replaceChildren();
  $("stats").textContent = "";
  $("message").focus();
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim() || current) return;
  $("message").value = "";
  send(text);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") stop();
});
$("stop").addEventListener("click", stop);

if (store.token) signIn(store.token);
else $("signin").hidden = false;
