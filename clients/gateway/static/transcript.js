// The transcript: a session's messages as Markdown, a reply growing live. Untrusted text (a reply, a user's message)
// is rendered by markdown-it with raw HTML off (it shows as text) and its link validation (no javascript: links);
// links open with rel="noopener noreferrer", and the page's Content-Security-Policy forbids inline scripts.
//
// A growing reply re-renders only its last block, as the CLI does: the text before the last blank line outside a
// code fence is settled, rendered once and appended; a 100k-character reply costs the same per token as a short one.
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

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

export function button(text, label, onClick, className = "") {
  const node = el("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

function render(into, text) {
  into.innerHTML = md.render(text);
  for (const pre of into.querySelectorAll("pre")) {
    const copy = button("Copy", "Copy the code", () => navigator.clipboard.writeText(pre.querySelector("code")?.textContent || ""), "copy");
    pre.append(copy);
  }
}

// Where the settled part of a text may end: after the last blank line outside a code fence. Scans only what it
// has not scanned before.
class Blocks {
  constructor() { this.scanned = 0; this.fence = null; this.cut = 0; }

  advance(text) {
    let start = this.scanned;
    for (;;) {
      const end = text.indexOf("\n", start);
      if (end < 0) break;
      const line = text.slice(start, end);
      const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line);
      if (this.fence) {
        if (marker && marker[1][0] === this.fence[0] && marker[1].length >= this.fence.length && !line.trim().slice(marker[1].length).trim()) this.fence = null;
      } else if (marker) {
        this.fence = marker[1];
      } else if (!line.trim() && text.length > end + 1) {
        this.cut = end + 1;
      }
      start = end + 1;
    }
    this.scanned = start;
    return this.cut;
  }
}

function thoughtFor(ms) {
  return ms == null ? "Thought" : `Thought for ${(ms / 1000).toFixed(1)} s`;
}

export class MessageView {
  // A user message (rendered once) or a reply (growing while it streams); ``msg`` as /chatter/v1 gives it, or
  // {role} for one still being written.
  constructor(msg) {
    this.role = msg.role;
    this.el = el("article", `message ${msg.role}`);
    this.el.setAttribute("aria-label", msg.role === "user" ? "You" : "Reply");
    this.meta = el("div", "meta");
    if (msg.role === "assistant") {
      this.thinking = el("details", "thinking");
      this.thinking.hidden = true;
      this.thinking.append(el("summary", "", "Thinking…"), el("div", "thought"));
      this.el.append(this.thinking);
    }
    this.settled = el("div", "body settled");
    this.settled.setAttribute("aria-live", "polite");  // the reply announced block by block, politely
    this.tail = el("div", "body tail");
    this.status = el("div", "status");
    this.el.append(this.settled, this.tail, this.status, this.meta);
    this.text = "";
    this.reasoning = "";
    this.blocks = new Blocks();
    this.settledTo = 0;
    this.pending = false;
    this.update(msg);
  }

  update(msg) {
    // what the stored message says (not its text when it streams here): its id, arrows and status
    this.msg = msg;
    if (msg.id) this.el.dataset.id = msg.id;
    if (msg.content !== undefined && !this.streaming) this.setText(msg.content, msg.reasoning || "");
    if (msg.status && msg.role === "assistant" && !this.streaming) this.end(msg.status, msg.stats || {});
  }

  setText(text, reasoning) {
    this.text = "";
    this.reasoning = "";
    this.blocks = new Blocks();
    this.settledTo = 0;
    this.settled.replaceChildren();
    this.add(text, reasoning);
    this.draw();
  }

  start() {
    this.streaming = true;
    this.startedAt = performance.now();
    this.el.setAttribute("aria-busy", "true");
  }

  add(text, reasoning) {
    if (reasoning) {
      if (this.thinkingSince === undefined) this.thinkingSince = performance.now();
      this.reasoning += reasoning;
    }
    if (text) {
      if (this.reasoning && this.thoughtMs === undefined && this.thinkingSince !== undefined) {
        this.thoughtMs = performance.now() - this.thinkingSince;
      }
      this.text += text;
    }
    if (!this.pending) {  // at most one render a frame
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  draw() {
    this.el.dataset.raw = this.text;  // the text as it came, whole (the tests compare it)
    if (this.thinking && this.reasoning.trim()) {  // a think block of whitespace alone is no thinking
      this.thinking.hidden = false;
      this.thinking.querySelector(".thought").textContent = this.reasoning;
      const answering = this.text.length > 0 || !this.streaming;
      if (answering && !this.folded) {
        this.folded = true;
        this.thinking.open = false;
      } else if (!answering && !this.folded) {
        this.thinking.open = true;
      }
      this.thinking.querySelector("summary").textContent = answering ? `▸ ${thoughtFor(this.thoughtMs)}` : "Thinking…";
    }
    const cut = this.blocks.advance(this.text);
    if (cut > this.settledTo) {
      const block = el("div", "block");
      render(block, this.text.slice(this.settledTo, cut));
      this.settled.append(block);
      this.settledTo = cut;
    }
    render(this.tail, this.text.slice(this.settledTo));
  }

  end(status, stats) {
    this.streaming = false;
    this.el.removeAttribute("aria-busy");
    if (stats.thinking_ms != null) this.thoughtMs = stats.thinking_ms;
    this.draw();
    this.el.dataset.status = status;
    this.status.textContent = status === "completed" ? "" : status;
  }

  setControls(nodes) {
    this.meta.replaceChildren(...nodes);
  }
}

export function arrows(msg, onSwitch) {
  // < 2/3 >: the versions of a message (an edit, a regenerated reply), oldest first
  const box = el("span", "arrows");
  const at = msg.sibling_index;
  const count = msg.sibling_count;
  const back = button("<", "Earlier version", () => onSwitch(msg, at - 1));
  const next = button(">", "Later version", () => onSwitch(msg, at + 1));
  back.disabled = at <= 0;
  next.disabled = at >= count - 1;
  box.append(back, el("span", "position", `${at + 1}/${count}`), next);
  return box;
}

export function statsLine(stats, status, context) {
  // the honest line: each count labelled server-reported or estimated
  const parts = [];
  if (stats.tokens != null) parts.push(`${stats.tokens} tokens (${stats.tokens_source || "estimated"})`);
  if (stats.tok_per_s != null) parts.push(`${stats.tok_per_s} tok/s`);
  if (stats.ttft_ms != null) parts.push(`TTFT ${stats.ttft_ms} ms`);
  if (context) parts.push(`context ${context.history_tokens}/${context.max_input_tokens}`);
  if (status) parts.push(status);
  return parts.join(" · ");
}

export { el };
