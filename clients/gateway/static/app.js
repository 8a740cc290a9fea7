// Chatter in a browser: the page's wiring. Sign in, the session list (sessions.js), the transcript
// (transcript.js), replies followed and resumed exactly (api.js), Preview and Settings (dialogs.js).
import { api, followReply, json, own, send, sessionMessages, store } from "/page/api.js";
import { arrows, button, el, MessageView, statsLine } from "/page/transcript.js";
import { SessionList } from "/page/sessions.js";
import { showPreview, showSettings } from "/page/dialogs.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;  // another tab's (or client's) new reply shows within this
let views = [];  // the active branch's messages, in order
let current = null;  // the reply being followed: {id, seq, text, reasoning, session, controller, stopped}
let loadedActivity = null;  // the open session's last activity when it was loaded
let context = null;

function banner(words) {
  const node = $("banner");
  node.textContent = words || "";
  node.hidden = !words;
}

const sessions = new SessionList({
  list: $("sessions"), search: $("search"), more: $("more"),
  onOpen: (id) => open(id), onError: banner,
  onDeleted: (id) => { if (id === store.conversation) newSession(); },
});

// ------------------------------------------------------------------ the transcript

function clearTranscript() {
  $("transcript").replaceChildren();
  views = [];
  context = null;
  $("stats").textContent = "";
}

function addView(msg) {
  const view = new MessageView(msg);
  $("transcript").append(view.el);
  views.push(view);
  return view;
}

function scrollDown() {
  const transcript = $("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

const canContinue = (msg) => (msg.content || "").length > 0 && (["cancelled", "error", "interrupted"].includes(msg.status)
  || (msg.status === "completed" && msg.stats?.finish_reason === "length"));

function updateControls() {
  views.forEach((view, index) => {
    const msg = view.msg;
    const nodes = [];
    if (msg.sibling_count > 1) nodes.push(arrows(msg, switchBranch));
    if (view.role === "user" && msg.id) {
      const edit = button("Edit", "Edit this message", () => editMessage(view));
      edit.disabled = !!current;
      nodes.push(edit);
    }
    if (view.role === "assistant" && msg.response_id) {
      nodes.push(button("Preview", "Preview the exact prompt of this reply", () => preview(msg.response_id)));
      if (index === views.length - 1) {
        const again = button("Regenerate", "Regenerate this reply", regenerate);
        again.disabled = !!current;
        nodes.push(again);
        if (canContinue(msg)) {
          const more = button("Continue", "Continue this reply where it was cut", continueReply);
          more.disabled = !!current;
          nodes.push(more);
        }
      }
    }
    view.setControls(nodes);
  });
}

function showStats() {
  const last = [...views].reverse().find((view) => view.role === "assistant" && view.msg.stats);
  $("stats").textContent = last ? statsLine(last.msg.stats, last.msg.status, context) : "";
}

async function refreshContext() {
  if (!store.conversation) return;
  try {
    const settings = await json(own(`/sessions/${encodeURIComponent(store.conversation)}`));
    context = settings.context;
    $("title").textContent = settings.title || "Untitled session";
    showStats();
  } catch { /* the list or the transcript says what is wrong */ }
}

// ------------------------------------------------------------------ a session

async function open(sessionId) {
  stopFollowing();
  banner("");
  try {
    await load(sessionId);
  } catch (error) {
    if (error.status === 404) { newSession(); banner("That session is not there any more."); } else banner(error.message);
  }
  $("message").focus();
}

async function load(sessionId) {
  const messages = await sessionMessages(sessionId);
  const inflight = store.inflight;
  clearTranscript();
  store.conversation = sessionId;
  sessions.select(sessionId);
  $("system-box").hidden = true;
  $("settings").disabled = false;
  loadedActivity = sessions.lastActivity(sessionId);
  let live = null;
  for (const msg of messages) {
    const resuming = msg.role === "assistant" && inflight && inflight.id === msg.response_id;
    if (resuming || (msg.role === "assistant" && ["queued", "streaming"].includes(msg.status))) {
      live = { msg, view: addView({ ...msg, content: undefined, reasoning: undefined, status: undefined }), resuming };
    } else {
      addView(msg);
    }
  }
  if (inflight && !live) store.inflight = null;
  updateControls();
  showStats();
  scrollDown();
  refreshContext();
  if (live) {  // the reply streaming: what this tab had and the rest from its number on, or all of it
    const state = live.resuming
      ? { id: inflight.id, seq: inflight.seq, text: inflight.text, reasoning: inflight.reasoning, session: sessionId }
      : { id: live.msg.response_id, seq: -1, text: "", reasoning: "", session: sessionId };
    live.view.setText(state.text, state.reasoning);
    follow(state, live.view, null);
  }
}

async function refreshMeta() {
  // after a reply: ids, arrows and controls from the stored session, the streamed text left as it came
  const messages = await sessionMessages(store.conversation);
  if (messages.length !== views.length || messages.some((msg, i) => msg.role !== views[i].role)) {
    await load(store.conversation);
    return;
  }
  messages.forEach((msg, i) => { views[i].msg = msg; views[i].el.dataset.id = msg.id; });
  updateControls();
  showStats();
  scrollDown();
  await sessions.refresh();
  loadedActivity = sessions.lastActivity(store.conversation);
  refreshContext();
}

function newSession() {
  stopFollowing();
  store.conversation = null;
  store.inflight = null;
  clearTranscript();
  sessions.select(null);
  $("title").textContent = "New session";
  $("settings").disabled = true;
  $("system-box").hidden = false;
  $("message").focus();
}

// ------------------------------------------------------------------ following a reply

function statsOf(response) {
  const usage = response.usage;
  if (!usage) return {};
  const c = usage.chatter || {};
  return { tokens: usage.output_tokens, tokens_source: c.output_tokens_source, tok_per_s: c.tok_per_s,
           ttft_ms: c.ttft_ms, thinking_ms: c.thinking_ms };
}

function stopFollowing() {
  // this tab stops following; the reply goes on (Stop is what stops it)
  if (current) {
    current.stopped = true;
    current.controller.abort();
    current = null;
    store.inflight = null;
  }
  setBusy(false);
}

async function follow(state, view, first) {
  state.controller = state.controller || new AbortController();
  current = state;
  view.start();
  setBusy(true);
  $("announce").textContent = "Reply started.";
  try {
    const response = await followReply(state, {
      created: (created) => {
        view.el.dataset.id = created.id.slice(5);
        if (store.conversation !== created.conversation.id) {
          store.conversation = state.session = created.conversation.id;
          $("settings").disabled = false;
          $("system-box").hidden = true;
          sessions.refresh().then(() => sessions.select(store.conversation));
          refreshContext();
        }
      },
      text: (delta) => { view.add(delta, ""); requestAnimationFrame(scrollDown); },
      reasoning: (delta) => view.add("", delta),
      end: () => {},
      reconnecting: (words) => { $("reconnecting").textContent = words; $("reconnecting").hidden = !words; },
    }, first);
    if (!response || state.stopped) return;
    view.end(response.status, statsOf(response));
    view.msg = { ...view.msg, status: response.status, stats: statsOf(response) };
    $("announce").textContent = `Reply ${response.status}.`;
    if (response.error) banner(response.error.message);
    store.inflight = null;
    current = null;
    setBusy(false);
    await refreshMeta();
  } catch (error) {
    if (!state.stopped) banner(error.message);
  } finally {
    if (current === state) { current = null; setBusy(false); }
  }
}

function setBusy(busy) {
  $("stop").disabled = !busy;
  $("send").disabled = busy;
  updateControls();
}

async function sendMessage(text) {
  banner("");
  addView({ role: "user", content: text });
  const view = addView({ role: "assistant" });
  scrollDown();
  const body = { input: text, stream: true, background: true };  // background: a reload does not stop it
  if (store.conversation) body.conversation = store.conversation;
  else if ($("system").value.trim()) body.instructions = $("system").value;
  const state = { id: null, seq: -1, text: "", reasoning: "", session: store.conversation, controller: new AbortController() };
  let response;
  try {
    response = await api("/v1/responses", { method: "POST", body: JSON.stringify(body), signal: state.controller.signal });
  } catch (error) {
    views.splice(-2).forEach((gone) => gone.el.remove());
    banner(error.message);
    return;
  }
  await follow(state, view, response);
}

async function startReply(path, body, keepFrom) {
  // Regenerate, Continue, Edit: a new reply, followed from its start; views from ``keepFrom`` on are replaced
  banner("");
  let started;
  try {
    started = await send("POST", own(`/sessions/${encodeURIComponent(store.conversation)}${path}`), body);
  } catch (error) {
    banner(error.message);
    return;
  }
  views.splice(keepFrom).forEach((gone) => gone.el.remove());
  if (body?.text !== undefined) addView({ role: "user", content: body.text });
  const view = addView({ role: "assistant" });
  scrollDown();
  await follow({ id: started.id, seq: -1, text: "", reasoning: "", session: store.conversation }, view, null);
}

const regenerate = () => startReply("/regenerate", undefined, views.length - 1);
const continueReply = () => startReply("/continue", undefined, views.length - 1);

function editMessage(view) {
  const index = views.indexOf(view);
  const box = el("form", "editing");
  const area = el("textarea");
  area.value = view.text;
  area.rows = Math.min(12, view.text.split("\n").length + 1);
  area.setAttribute("aria-label", "The message, written again");
  const save = el("button", "", "Send");
  save.type = "submit";
  box.append(area, save, button("Cancel", "Cancel the edit", () => box.replaceWith(view.el)));
  box.addEventListener("submit", (event) => {
    event.preventDefault();
    box.replaceWith(view.el);
    if (area.value.trim()) startReply("/edit", { message_id: view.msg.id, text: area.value }, index);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.stopPropagation(); box.replaceWith(view.el); }
  });
  view.el.replaceWith(box);
  area.focus();
}

async function switchBranch(msg, sibling) {
  try {
    await send("POST", own(`/sessions/${encodeURIComponent(store.conversation)}/branch`),
               { message_id: msg.id, sibling });
    await load(store.conversation);
  } catch (error) {
    banner(error.message);
  }
}

async function stop() {
  if (current?.id) {
    try { await api(`/v1/responses/${current.id}/cancel`, { method: "POST" }); } catch (error) { banner(error.message); }
  }
}

function preview(responseId) {
  showPreview($("preview"), responseId).catch((error) => banner(error.message));
}

// ------------------------------------------------------------------ signing in, and the keys

async function signIn(token) {
  store.token = token;
  try {
    await api("/v1/models");
  } catch (error) {
    store.token = null;
    banner(error.status === 401 ? "That token does not sign in." : error.message);
    $("signin").hidden = false;
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  await sessions.refresh();
  if (store.conversation) await open(store.conversation);
  else newSession();
}

async function poll() {
  // what another tab or client did: the list, and the open session when it moved
  if (!store.token || $("app").hidden || document.visibilityState !== "visible" || current || sessions.busy
      || $("search").value.trim() || document.querySelector("dialog[open], form.editing")) return;
  await sessions.refresh();
  const activity = store.conversation && sessions.lastActivity(store.conversation);
  if (activity && activity !== loadedActivity && !current) await load(store.conversation).catch(() => {});
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
$("new").addEventListener("click", newSession);
$("settings").addEventListener("click", () => {
  showSettings($("settings-dialog"), store.conversation, (saved) => {
    $("title").textContent = saved.title || "Untitled session";
    context = saved.context;
    showStats();
    sessions.refresh();
  }).catch((error) => banner(error.message));
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim() || current) return;
  $("message").value = "";
  sendMessage(text);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !document.querySelector("dialog[open]")) stop();
  if (event.key.toLowerCase() === "k" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("search").focus();
    $("search").select();
  }
});
$("stop").addEventListener("click", stop);
for (const dialog of document.querySelectorAll("dialog")) {
  dialog.querySelector("button.close")?.addEventListener("click", () => dialog.close());
}
setInterval(() => { poll().catch(() => {}); }, POLL_MS);

if (store.token) signIn(store.token);
else $("signin").hidden = false;
