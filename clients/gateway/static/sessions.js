// The session list: the user's sessions, most recently active first, each opened, renamed or deleted from here;
// and search over every message of theirs (Ctrl+K), its matches marked.
import { json, own, send } from "/page/api.js";
import { button, el } from "/page/transcript.js";

const PAGE = 50;

export class SessionList {
  constructor({ list, search, more, onOpen, onDeleted, onError }) {
    this.list = list;
    this.search = search;
    this.more = more;
    this.onOpen = onOpen;
    this.onDeleted = onDeleted;
    this.onError = onError;
    this.rows = [];
    this.next = null;
    this.current = null;
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.refresh(), 250);
    });
    search.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && search.value) {
        event.stopPropagation();
        search.value = "";
        this.refresh();
      }
    });
    more.addEventListener("click", () => this.loadMore());
  }

  get busy() {
    // a rename being typed, or a delete asked to be confirmed: the list is not redrawn under it
    return this.list.querySelector("input, .confirm") !== null;
  }

  async refresh() {
    try {
      if (this.search.value.trim()) {
        await this.showHits(this.search.value);
      } else {
        const page = await json(own(`/sessions?limit=${PAGE}`));
        this.rows = page.data;
        this.next = page.next;
        this.draw();
      }
    } catch (error) {
      this.onError(error.message);
    }
  }

  async loadMore() {
    if (!this.next) return;
    const query = new URLSearchParams({ limit: PAGE, before: this.next.before, before_id: this.next.before_id });
    const page = await json(own(`/sessions?${query}`));
    this.rows.push(...page.data);
    this.next = page.next;
    this.draw();
  }

  lastActivity(sessionId) {
    return this.rows.find((row) => row.id === sessionId)?.last_activity;
  }

  select(sessionId) {
    this.current = sessionId;
    for (const item of this.list.children) {
      if (item.dataset.id === sessionId) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    }
  }

  draw() {
    this.list.setAttribute("aria-label", "Sessions");
    this.list.replaceChildren(...this.rows.map((row) => this.item(row)));
    this.more.hidden = !this.next;
    this.select(this.current);
  }

  item(row) {
    const item = el("li", "session");
    item.dataset.id = row.id;
    const title = row.title || "(untitled)";
    const open = button(title, `Open ${title}`, () => this.onOpen(row.id), "open");
    open.title = title;  // the whole title, when it is cut to fit
    if (row.status === "streaming") open.classList.add("streaming");
    const rename = button("✎", `Rename ${title}`, () => this.rename(item, row), "rename");
    const remove = button("✕", `Delete ${title}`, () => this.remove(item, row, remove), "delete");
    item.append(open, rename, remove);
    return item;
  }

  rename(item, row) {
    const input = el("input");
    input.value = row.title;
    input.setAttribute("aria-label", "New title (Enter saves, Esc cancels)");
    item.replaceChildren(input);
    input.focus();
    input.select();
    input.addEventListener("keydown", async (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.draw();
      } else if (event.key === "Enter") {
        event.preventDefault();
        try {
          row.title = (await send("PATCH", own(`/sessions/${row.id}`), { title: input.value })).title;
        } catch (error) {
          this.onError(error.message);
        }
        this.draw();
        this.list.querySelector(`li[data-id="${row.id}"] .open`)?.focus();
      }
    });
  }

  async remove(item, row, control) {
    if (!control.classList.contains("confirm")) {  // the first press asks, the second deletes
      control.classList.add("confirm");
      control.textContent = "Delete?";
      control.setAttribute("aria-label", `Press again to delete ${row.title} for good`);
      setTimeout(() => { if (control.isConnected) this.draw(); }, 5000);
      return;
    }
    try {
      await send("DELETE", own(`/sessions/${row.id}`));
    } catch (error) {
      this.onError(error.message);
      return;
    }
    this.rows = this.rows.filter((other) => other.id !== row.id);
    this.draw();
    this.onDeleted(row.id);
  }

  async showHits(query) {
    const hits = (await json(own(`/search?${new URLSearchParams({ q: query, limit: "50" })}`))).data;
    this.more.hidden = true;
    if (!hits.length) {
      this.list.replaceChildren(el("li", "empty", "Nothing found."));
      return;
    }
    this.list.setAttribute("aria-label", "Search results");
    this.list.replaceChildren(...hits.map((hit) => {
      const item = el("li", "hit");
      item.dataset.id = hit.session_id;
      const open = button("", `Open ${hit.title}`, () => this.onOpen(hit.session_id, hit.message_id), "open");
      const snippet = el("span", "snippet");
      for (const part of hit.snippet) snippet.append(part.match ? el("mark", "", part.text) : document.createTextNode(part.text));
      open.append(el("strong", "", hit.title || "(untitled)"), snippet);
      item.append(open);
      return item;
    }));
  }
}
