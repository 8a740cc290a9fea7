"""How a streaming reply looks in a terminal: live Markdown and an always-visible stats bar (rich),
or plain text when stdout is not a terminal. Shared by ``chat``, ``send`` and ``watch``.

Finished blocks (paragraphs, closed code fences) are printed once and left alone; only the block
being written lives in the refreshing region, redrawn at most ``REFRESH_PER_S`` times a second. So
a long reply never re-renders its whole history, and nothing flickers.

A reasoning model's thinking comes first: ``Thinking…`` with its newest few lines, dim, folded, then
``Thought for 12.3 s`` once the answer begins. Shown in full (``--show-thinking``, ``/think``), its lines
are printed dim as they end. In plain mode the thinking goes to stderr, so stdout stays the answer.
"""
from __future__ import annotations

import sys
import time

from markdown_it import MarkdownIt
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.spinner import Spinner
from rich.text import Text

from clients.output import status_label

REFRESH_PER_S = 8
THINKING_FOLD_LINES = 4  # the newest lines of the thinking shown while it is folded


def fmt(value, unit: str = "") -> str:
    return "–" if value is None else f"{value:g}{unit}"


def final_stats_line(outcome: dict, stats: dict | None = None) -> str:
    """tokens (server|estimated) | duration | tok/s | TTFT | ctx ~used/limit | status [| error]. A continued reply's
    tokens are counted a segment at a time (``111 estimated + 203 server tokens``), and its own time to first token
    is told apart from its continuation's."""
    seconds = None if outcome["duration_ms"] is None else round(outcome["duration_ms"] / 1000, 2)
    segments = outcome.get("segments") or []
    if len(segments) > 1:
        tokens = " + ".join(f"{fmt(seg.get('tokens'))} {seg.get('tokens_source') or 'estimated'}"
                            for seg in segments) + " tokens"
        own = segments[0].get("ttft_ms")
        ttft = (f"TTFT {fmt(own, ' ms')}, continued after {fmt(outcome['ttft_ms'], ' ms')}" if "ttft_ms" in segments[0]
                else f"TTFT of the last segment {fmt(outcome['ttft_ms'], ' ms')}")
    else:
        tokens = f"{fmt(outcome['tokens'])} tokens ({outcome['tokens_source'] or 'estimated'})"
        ttft = f"TTFT {fmt(outcome['ttft_ms'], ' ms')}"
    line = f"{tokens} | {fmt(seconds, 's')} | {fmt(outcome['tok_per_s'])} tok/s | {ttft}"
    stats = stats or {}
    if stats.get("max_input_tokens"):
        line += f" | ctx ~{stats.get('prompt_tokens')}/{stats['max_input_tokens']}"
        if stats.get("dropped_messages"):
            line += f" ({stats['dropped_messages']} old messages left out)"
    if outcome.get("thinking_ms") is not None or outcome.get("reasoning_tokens"):
        seconds = "" if outcome.get("thinking_ms") is None else f" {outcome['thinking_ms'] / 1000:.1f}s"
        line += (f" | thought{seconds}, {fmt(outcome.get('reasoning_tokens'))} tokens "
                 f"({outcome.get('reasoning_tokens_source') or 'estimated'})")
    line += f" | {status_label(outcome['status'], outcome.get('finish_reason'))}"
    if outcome["error"]:
        line += f" | {outcome['error']}"
    if outcome.get("saved") is False:
        line += " | NOT SAVED YET: the persister or its database is unreachable (saved when back)"
    return line


def stored_stats_line(msg) -> str:
    """The stats line of a stored reply (a history's ``MessageView``), as it was shown when the reply ended."""
    stats = msg.stats or {}
    outcome = {key: stats.get(key) for key in ("tokens", "tokens_source", "ttft_ms", "duration_ms", "tok_per_s",
                                               "finish_reason", "reasoning_tokens", "reasoning_tokens_source",
                                               "thinking_ms")}
    outcome.update(status=msg.status, error=msg.error, segments=stats.get("segments") or [])
    return final_stats_line(outcome, stats)


def live_stats_line(tokens: int, started_at: float, first_token_at: float | None, thinking_at: float | None,
                    thought_s: float | None, now: float) -> str:
    """The stats bar while a reply streams (the terminal's and the window's): ``Thinking…`` until the first
    token; while a reasoning model thinks, how long and how much; then live tokens, elapsed, tok/s, TTFT."""
    if first_token_at is None:
        return "Thinking…"
    if thinking_at is not None and thought_s is None:
        return f"Thinking… {now - thinking_at:.1f}s, {tokens} tokens (estimated)"
    elapsed = now - first_token_at
    rate = tokens / elapsed if elapsed > 0.2 else None
    ttft = (first_token_at - started_at) * 1000
    return (f"{tokens} tokens (estimated) | {elapsed:.1f}s | {fmt(rate and round(rate, 1))} tok/s"
            f" | TTFT {ttft:.0f} ms")


_BLOCKS = MarkdownIt("commonmark")


def split_finished(text: str) -> int:
    """Where the finished blocks of ``text`` end: at the start of its last top-level Markdown block, which may
    still grow. markdown-it-py knows the blocks: fences of backticks or tildes (an open one runs to the end),
    indented code, and lists and quotes across blank lines."""
    starts = [token.map[0] for token in _BLOCKS.parse(text) if token.level == 0 and token.map and token.nesting >= 0]
    if len(starts) < 2:
        return 0
    lines = text.splitlines(keepends=True)
    return sum(len(line) for line in lines[:starts[-1]])


class ReplyRenderer:
    """Renders one reply. ``update(text, tokens)`` as text arrives; ``finish(outcome, stats)`` at the end."""

    def __init__(self, console: Console | None = None, plain: bool | None = None, show_thinking: bool = False) -> None:
        self.console = console or Console()
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.show_thinking = show_thinking  # the whole thinking, not its newest lines folded
        self.thinking_started_at: float | None = None
        self.thought_so_far = ""  # all the thinking had, to tell a think block of whitespace alone
        self.thought_s: float | None = None  # set when the thinking ended (the answer began)
        self.thinking_tail = ""  # the thinking not printed for good: its newest lines (folded) or last line (shown)
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self.tail = ""  # the block being written: what is not yet printed for good
        self.shown = 0  # characters rendered so far
        self.tokens = 0
        self.note = ""  # a line typed while the reply streams
        self.live: Live | None = None
        self._last_refresh = 0.0

    def __enter__(self) -> ReplyRenderer:
        if not self.plain:
            self.live = Live(self._region(), console=self.console, refresh_per_second=REFRESH_PER_S,
                             auto_refresh=False, transient=False, vertical_overflow="visible")
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def heading(self, line: str) -> None:
        """The user turn above a reply: on stderr in plain mode, so stdout stays the reply's text."""
        if self.plain:
            print(line, file=sys.stderr, flush=True)
        else:
            self.console.print(Text(line, style="bold"))

    def adopt(self, stats: dict) -> None:
        """Attaching to a reply under way: take its clock from the coordinator's stats, not from now."""
        if stats.get("ttft_ms") is None or stats.get("duration_ms") is None:
            return
        since_first_s = (stats["duration_ms"] + (stats.get("queue_wait_ms") or 0) - stats["ttft_ms"]) / 1000
        self.first_token_at = time.monotonic() - max(0.0, since_first_s)
        self.started_at = self.first_token_at - stats["ttft_ms"] / 1000

    def thinking(self, fresh: str, tokens: int | None = None) -> None:
        """More of the model's thinking, which comes before its answer."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        if tokens is not None:
            self.tokens = tokens
        self.thought_so_far += fresh
        if not self.thought_so_far.strip():
            return  # a think block of whitespace alone (a model with thinking off sends one) is no thinking
        if self.thinking_started_at is None:
            self.thinking_started_at = now
            if self.plain and not self.show_thinking:
                print("Thinking…", file=sys.stderr, flush=True)
        if self.plain:
            if self.show_thinking:
                sys.stderr.write(fresh)
                sys.stderr.flush()
            return
        self.thinking_tail += fresh
        if self.show_thinking:
            cut = self.thinking_tail.rfind("\n") + 1
            if cut and self.live is not None:
                done, self.thinking_tail = self.thinking_tail[:cut - 1], self.thinking_tail[cut:]
                self._print_above(Text(done, style="dim italic"))
        else:
            self.thinking_tail = "\n".join(self.thinking_tail.split("\n")[-THINKING_FOLD_LINES:])
        self.tick()

    def end_thinking(self) -> None:
        """The answer begins (or the reply ends): the thinking folds away to one line, ``Thought for 12.3 s``."""
        if self.thinking_started_at is None or self.thought_s is not None:
            return
        self.thought_s = time.monotonic() - self.thinking_started_at
        line = f"Thought for {self.thought_s:.1f} s"
        if self.plain:
            print(("\n" if self.show_thinking else "") + line, file=sys.stderr, flush=True)
            return
        tail, self.thinking_tail = self.thinking_tail, ""
        if self.live is not None:
            if self.show_thinking and tail:
                self._print_above(Text(tail, style="dim italic"))
            self._print_above(Text(line, style="dim"))

    def update(self, fresh: str, tokens: int | None = None) -> None:
        if fresh and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if fresh:
            self.end_thinking()
        self.tail += fresh
        self.shown += len(fresh)
        if tokens is not None:
            self.tokens = tokens
        if self.plain:
            sys.stdout.write(fresh)
            sys.stdout.flush()
            return
        self.tick()

    def tick(self, force: bool = False) -> None:
        """Redraw the live region, at most REFRESH_PER_S times a second (and the spinner with it)."""
        if self.live is None:
            return
        now = time.monotonic()
        if not force and now - self._last_refresh < 1 / REFRESH_PER_S:
            return
        self._last_refresh = now
        cut = split_finished(self.tail)
        if cut:
            done, self.tail = self.tail[:cut], self.tail[cut:]
            self._print_above(Markdown(done))
        self.live.update(self._region(), refresh=True)

    def _print_above(self, renderable) -> None:
        """Print for good above the live region, which is redrawn at once without what was printed: updated
        first, so it never shows that text twice for a moment."""
        self.live.update(self._region(), refresh=False)
        self.live.console.print(renderable)

    def _region(self, final_line: str | None = None, style: str = "dim"):
        tail = Markdown(self.tail) if self.tail.strip() else Text("")
        thinking = self.thinking_started_at is not None and self.thought_s is None
        if final_line is not None:
            bar = Text(final_line, style=style)
        else:
            line = live_stats_line(self.tokens, self.started_at, self.first_token_at, self.thinking_started_at,
                                   self.thought_s, time.monotonic())
            waiting = self.first_token_at is None or thinking
            bar = Spinner("dots", text=Text(line, style="dim")) if waiting else Text(line, style="dim")
        parts = [tail, bar]
        if thinking and self.thinking_tail.strip():
            lines = [line[:self.console.width - 2] for line in self.thinking_tail.split("\n")]
            parts.insert(0, Text("\n".join(lines), style="dim italic"))
        if self.note:
            parts.append(Text(f"› {self.note}", style="bold"))
        return Group(*parts)

    def finish(self, outcome: dict, stats: dict | None = None, text: str | None = None) -> None:
        """The durable end: the final stats. A cancel by another client may have kept less than this
        view showed; then the tail on screen is cut to the final text where it still can be."""
        self.end_thinking()  # a reply that ended mid-thought (a cancel) shows how long it thought
        line = final_stats_line(outcome, stats)
        style = {"completed": "dim", "cancelled": "yellow"}.get(outcome["status"], "red")
        if self.plain:
            sys.stdout.write("\n")
            sys.stdout.flush()
            print(line, file=sys.stderr, flush=True)
            return
        if text is not None and len(text) < self.shown:
            self.tail = self.tail[:max(0, len(self.tail) - (self.shown - len(text)))]
            self.shown = len(text)
        if self.live is not None:
            self.live.update(self._region(line, style), refresh=True)

    def detached(self, session_id: str, leaving: bool = True) -> None:
        """The client stopped following the reply under way to run a command: when that command leaves the
        session, the reply goes on there; else it is shown again once the command is done."""
        line = (f"(the reply goes on in session {session_id}; /switch back to see it)" if leaving
                else "(the reply goes on; it shows again below)")
        if self.plain:
            sys.stdout.write("\n")
            print(line, file=sys.stderr, flush=True)
        elif self.live is not None:
            self.live.update(self._region(line, "yellow"), refresh=True)
