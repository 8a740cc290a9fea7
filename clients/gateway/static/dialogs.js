// The two dialogs: Preview (a reply's prompt exactly as the model received it, and its hash) and Settings (the
// session's values as they are now; only what the user changed is sent).
import { json, own, send } from "/page/api.js";
import { el } from "/page/transcript.js";

export async function showPreview(dialog, responseId) {
  const preview = await json(own(`/responses/${encodeURIComponent(responseId)}/preview`));
  const body = dialog.querySelector(".content");
  const facts = el("dl");
  const fact = (name, value) => facts.append(el("dt", "", name), el("dd", "", value));
  fact("Prompt hash", preview.prompt_hash || "(none)");
  fact("Model", preview.model || "");
  if (Object.keys(preview.params || {}).length) fact("Request", JSON.stringify(preview.params));
  if (preview.dropped_count) fact("Left out", `${preview.dropped_count} earlier messages (the input budget)`);
  if (!preview.exact) fact("Not exact", preview.problem || "");
  body.replaceChildren(facts, ...preview.messages.map((msg) => {
    const part = el("section", `prompt ${msg.role}`);
    const content = typeof msg.content === "string" ? msg.content : JSON.stringify(msg.content, null, 2);
    part.append(el("h3", "", msg.role), el("pre", "", content));
    if (msg.tool_calls) part.append(el("pre", "", JSON.stringify(msg.tool_calls, null, 2)));
    return part;
  }));
  dialog.dataset.hash = preview.prompt_hash || "";
  dialog.showModal();
}

const FIELDS = ["title", "system", "model", "temperature", "max_tokens", "max_input_tokens", "continue_style"];
const NUMBERS = new Set(["temperature", "max_tokens", "max_input_tokens"]);

function shown(name, value) {
  return value === null || value === undefined ? "" : String(value);
}

export async function showSettings(dialog, sessionId, onSaved) {
  const current = await json(own(`/sessions/${encodeURIComponent(sessionId)}`));
  const form = dialog.querySelector("form");
  for (const name of FIELDS) form.elements[name].value = shown(name, current[name]);
  dialog.querySelector(".context").textContent = current.context
    ? `History: ${current.context.history_tokens} of ${current.context.max_input_tokens} input tokens` : "";
  dialog.querySelector(".error").textContent = "";
  form.onsubmit = async (event) => {
    event.preventDefault();
    if (event.submitter?.value === "cancel") { dialog.close(); return; }
    const changed = {};
    for (const name of FIELDS) {
      const raw = form.elements[name].value;
      if (raw === shown(name, current[name])) continue;  // unchanged: not sent
      if (NUMBERS.has(name)) {
        changed[name] = raw.trim() === "" ? (name === "max_input_tokens" ? 0 : null) : Number(raw);
      } else if (name === "continue_style") {
        changed[name] = raw || null;
      } else {
        changed[name] = raw;
      }
    }
    try {
      const saved = Object.keys(changed).length
        ? await send("PATCH", own(`/sessions/${encodeURIComponent(sessionId)}`), changed) : current;
      dialog.close();
      onSaved(saved, changed);
    } catch (error) {
      dialog.querySelector(".error").textContent = error.message;
    }
  };
  dialog.showModal();
}
