"""How commands show replies and records: following a reply to its durable end with a renderer, and the
text forms of sessions, status, history and previews. Shared by every command and by ``chatter chat``."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

from clients.api import Client
from clients.output import SigintFlag, exit_code, outcome_json, status_label
from clients.render import ReplyRenderer
from clients.view import ReplyView
from protocol import answers


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def renderer_for(args) -> ReplyRenderer | None:
    """Rich live Markdown on a terminal, plain text otherwise, nothing with --json."""
    return None if getattr(args, "json", False) else ReplyRenderer(show_thinking=getattr(args, "show_thinking", False))


def renderer_callbacks(renderer: ReplyRenderer | None) -> dict:
    """``Client.follow``'s callbacks that render a reply's thinking and answer as they grow."""
    if renderer is None:
        return {}
    return {"on_text": lambda fresh, view: renderer.update(fresh, view.tokens),
            "on_thinking": lambda fresh, view: renderer.thinking(fresh, view.tokens)}


def stream_reply(client: Client, session_id: str, start: Callable[[], dict], *,
                 renderer: ReplyRenderer | None = None, interrupt: Callable[[], str | None] | None = None,
                 attach: bool = False) -> tuple[dict, ReplyView]:
    """Start a reply (send or regenerate) and follow it to the durable end. Ctrl+C cancels the reply only,
    even before it starts. Returns the ``--json`` outcome and the view."""
    client.subscribe(session_id)  # before starting: the Clone pattern's first step
    with SigintFlag() as sigint:
        started = start()

        def check() -> str | None:
            if renderer is not None:
                renderer.tick()
            if sigint.raised:
                return "cancel"
            return interrupt() if interrupt is not None else None

        view = client.follow(session_id, started.generation_id, interrupt=check, attach=attach,
                             **renderer_callbacks(renderer))
    return outcome_json(session_id, view, started), view


def finish(outcome: dict, view: ReplyView, renderer: ReplyRenderer | None) -> int:
    stats = (view.final or {}).get("stats")
    if renderer is None:
        print(json.dumps(outcome, ensure_ascii=False))
    else:
        renderer.finish(outcome, stats, view.text)
        for call in view.tool_calls:
            print(tool_call_line(call))
    if not outcome["saved"]:
        print(f"chatter: the reply is {outcome['status']} ({len(view.text)} characters) but not saved yet: the "
              "persister or its database is unreachable; it is saved when they are back "
              "(chatter status shows the persister)", file=sys.stderr)
    return exit_code(outcome["status"], outcome["saved"])


# ---------------------------------------------------------------- commands


def print_sessions(rows: list[answers.SessionSummary]) -> None:
    for row in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.last_activity)) if row.last_activity else "–"
        print(f"{row.session_id}  {stamp}  {row.message_count:>3} msgs  {row.status:<11}  {row.title}")


def print_status(status: answers.Status) -> None:
    print("coordinator: up")
    print(f"generators: {len(status.generators)}")
    for g in status.generators:
        print(f"  {g.generator_id}: {g.active} active, {g.capacity_free} free, seen {g.seen_ms_ago} ms ago")
    print(f"active generations: {len(status.active)}")
    for g in status.active:
        print(f"  {g.generation_id} session {g.session_id}: {g.status}, {g.length} chars, "
              f"prompt ~{g.prompt_tokens}/{g.max_input_tokens} tokens")
    if status.context is not None:
        ctx = status.context
        print(f"session {ctx.session_id}: history ~{ctx.history_tokens}/{ctx.max_input_tokens} tokens")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(status.counters.items())))
    print(f"continue style: {status.continue_style} ({status.continue_style_why})")
    print_durability(status)


def print_durability(status: answers.Status) -> None:
    """The persister, its database, the coordinator's own reads, and what is not saved yet."""
    persister, seen = status.persister, status.persister_seen_ms_ago
    if seen is None:
        print("persister: NOT CONNECTED (not heard from since the coordinator started)")
    elif not status.persister_connected:
        print(f"persister: NOT CONNECTED (last heard from {seen / 1000:.0f} s ago)")
    else:
        print(f"persister: connected (heard from {seen} ms ago)")
    if persister:
        print(f"persister: {persister.commits} commits, {persister.ops} operations, "
              f"{persister.reply_text_bytes} reply text bytes written, {persister.failed_batches} failed "
              f"batches, {persister.ops_rejected} operations rejected"
              + (f", {persister.frames_dropped} answers dropped while the coordinator was unreachable (resent)"
                 if persister.frames_dropped else ""))
        if persister.failing_since is not None:
            print(f"database: FAILING for {_since(persister.failing_since)}: {persister.last_error}; nothing new "
                  "is durable until it recovers")
        else:
            print("database: reachable" + _last_failure(persister.last_failed_at, persister.last_failure))
    if status.reads_failing_since is not None:
        print(f"coordinator's reads: FAILING for {_since(status.reads_failing_since)}: {status.reads_error}")
    elif status.reads_last_failed_at is not None:
        print("coordinator's reads: working" + _last_failure(status.reads_last_failed_at, status.reads_last_error))
    if status.unsaved:
        print(f"not saved yet: {status.unsaved} messages, the oldest waiting {status.oldest_unsaved_ms / 1000:.1f} s")
    else:
        print("not saved yet: nothing")


def _last_failure(at: float | None, words: str | None) -> str:
    return "" if at is None else f" (last failed {_since(at)} ago: {words})"


def _since(then: float) -> str:
    return f"{max(0.0, time.time() - then):.0f} s"


def print_history(history: answers.History, show_thinking: bool = False, console=None) -> None:
    """A session's messages, each under a header line. On a terminal (``console``, or stdout when it is one) each is
    rendered as Markdown, your messages in a box of their own apart from the replies; elsewhere as plain text."""
    if console is None and sys.stdout.isatty():
        from rich.console import Console
        console = Console()
    print(f"session {history.session_id}: {history.title}")
    if history.system:
        print(f"[system] {history.system}")
    for number, msg in enumerate(history.messages, 1):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg.created_at))
        status = status_label(msg.status, (msg.stats or {}).get("finish_reason"))
        role = f"tool result for {msg.tool_call_id}" if msg.role == "tool" else msg.role
        head = f"#{number} [{role}] {stamp} {status} {msg.message_id}"
        if msg.sibling_count > 1:  # chatter switch SESSION N --version K shows another
            head += f" < {msg.sibling_index + 1}/{msg.sibling_count} >"
        stats = msg.stats
        if msg.role == "assistant" and stats:
            head += f" | {stats.get('tokens')} tokens ({stats.get('tokens_source')}), TTFT {stats.get('ttft_ms')} ms"
            if stats.get("continued"):
                head += " | " + continued_label(stats)
        if msg.error:
            head += f" | {msg.error}"
        print(head)
        if msg.reasoning.strip():  # a think block of whitespace alone is no thinking
            print(thinking_fold(msg.reasoning, stats) if not show_thinking else
                  f"[thinking]\n{msg.reasoning}\n[/thinking]")
        if console is None:
            print(msg.content)
        else:
            console.print(message_block(msg))
        for call in msg.tool_calls:
            print(tool_call_line(call))
        print()


def message_block(msg):
    """A message as rich draws it: Markdown; yours (and a tool's result) in a box of its own."""
    from rich.markdown import Markdown
    from rich.panel import Panel
    body = Markdown(msg.content)
    if msg.role == "assistant":
        return body
    return Panel(body, title="you" if msg.role == "user" else "tool result", title_align="left", border_style="blue")


def tool_call_line(call: dict) -> str:
    """A tool call as one line: ``→ get_weather({"city": "Oslo"})  [call_1]``."""
    return f"→ {call['function']['name']}({call['function']['arguments']})  [{call.get('id', '')}]"


def continued_label(stats: dict) -> str:
    """A continued reply's segments in one line: ``continued 2× (at 120, 388 characters; after: ...)``."""
    segments = stats.get("segments") or []
    label = f"continued {stats['continued']}×"
    starts = [str(seg.get("from")) for seg in segments[1:]]
    if starts:
        label += f" (at {', '.join(starts)} characters"
        label += f"; after {'; '.join(stats['continued_after'])})" if stats.get("continued_after") else ")"
    return label


def thinking_fold(reasoning: str, stats: dict | None) -> str:
    """A reply's thinking folded to one line under it: how long, how much, and how it begins."""
    stats = stats or {}
    seconds = stats.get("thinking_ms")
    what = [f"{seconds / 1000:.1f} s" if seconds is not None else None,
            f"{stats['reasoning_tokens']} tokens ({stats.get('reasoning_tokens_source', 'estimated')})"
            if stats.get("reasoning_tokens") is not None else None, f"{len(reasoning)} characters"]
    begins = " ".join(reasoning.split())
    begins = begins if len(begins) <= 80 else begins[:79] + "…"
    return f"▸ thought ({', '.join(w for w in what if w)}; --show-thinking shows it): {begins}"


def print_preview(preview: answers.Preview) -> None:
    note = f"# prompt of {preview.message_id} — model {preview.model}, sha256 {preview.prompt_hash}"
    if preview.dropped_count:
        shown = "" if len(preview.dropped_message_ids) == preview.dropped_count else \
            f" (the newest {len(preview.dropped_message_ids)} of them)"
        note += (f"\n# left out to fit the input budget: {preview.dropped_count} older messages{shown}: "
                 + ", ".join(preview.dropped_message_ids))
    if preview.thinking_left_out:
        note += (f"\n# the thinking of {preview.thinking_left_out} earlier replies is left out, as reasoning models "
                 "advise (CHATTER_PROMPT_THINKING=keep keeps it)")
    if not preview.exact:
        note += f"\n# NOT EXACTLY WHAT WAS SENT: {preview.problem}"
    print(note, file=sys.stderr)
    write_out(preview.preview)
