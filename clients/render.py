"""How a streaming reply looks in a terminal: live Markdown and an always-visible stats bar (rich),
or plain text when stdout is not a terminal. Shared by ``chat``, ``send`` and ``watch``.

Finished blocks (paragraphs, closed code fences) are printed once and left alone; only the block
being written lives in the refreshing region, redrawn at most ``REFRESH_PER_S`` times a second. So
a long reply never re-renders its whole history, and nothing flickers.
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


def fmt(value, unit: str = "") -> str:
    return "–" if value is None else f"{value:g}{unit}"


def final_stats_line(outcome: dict, stats: dict | None = None) -> str:
    """tokens (server|estimated) | duration | tok/s | TTFT | ctx ~used/limit | status [| error]."""
    seconds = None if outcome["duration_ms"] is None else round(outcome["duration_ms"] / 1000, 2)
    source = outcome["tokens_source"] or "estimated"
    line = (f"{fmt(outcome['tokens'])} tokens ({source}) | {fmt(seconds, 's')} | {fmt(outcome['tok_per_s'])} tok/s"
            f" | TTFT {fmt(outcome['ttft_ms'], ' ms')}")
    stats = stats or {}
    if stats.get("max_input_tokens"):
        line += f" | ctx ~{stats.get('prompt_tokens')}/{stats['max_input_tokens']}"
        if stats.get("dropped_messages"):
            line += f" ({stats['dropped_messages']} old messages left out)"
    line += f" | {status_label(outcome['status'], outcome.get('finish_reason'))}"
    if outcome["error"]:
        line += f" | {outcome['error']}"
    if outcome.get("saved") is False:
        line += " | NOT SAVED YET: the persister or its database is unreachable (saved when back)"
    return line


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

    def __init__(self, console: Console | None = None, plain: bool | None = None) -> None:
        self.console = console or Console()
        self.plain = (not self.console.is_terminal) if plain is None else plain
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

    def update(self, fresh: str, tokens: int | None = None) -> None:
        if fresh and self.first_token_at is None:
            self.first_token_at = time.monotonic()
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
            self.live.console.print(Markdown(self.tail[:cut]))
            self.tail = self.tail[cut:]
        self.live.update(self._region(), refresh=True)

    def _region(self, final_line: str | None = None, style: str = "dim"):
        tail = Markdown(self.tail) if self.tail.strip() else Text("")
        if final_line is not None:
            bar = Text(final_line, style=style)
        elif self.first_token_at is None:
            bar = Spinner("dots", text=Text("Thinking…", style="dim"))
        else:
            elapsed = time.monotonic() - self.first_token_at
            rate = self.tokens / elapsed if elapsed > 0.2 else None
            ttft = (self.first_token_at - self.started_at) * 1000
            bar = Text(f"{self.tokens} tokens (estimated) | {elapsed:.1f}s | {fmt(rate and round(rate, 1))} tok/s"
                       f" | TTFT {ttft:.0f} ms", style="dim")
        parts = [tail, bar]
        if self.note:
            parts.append(Text(f"› {self.note}", style="bold"))
        return Group(*parts)

    def finish(self, outcome: dict, stats: dict | None = None, text: str | None = None) -> None:
        """The durable end: the final stats. A cancel by another client may have kept less than this
        view showed; then the tail on screen is cut to the final text where it still can be."""
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

    def detached(self, session_id: str) -> None:
        line = f"(the reply goes on in session {session_id}; /switch back to see it)"
        if self.plain:
            sys.stdout.write("\n")
            print(line, file=sys.stderr, flush=True)
        elif self.live is not None:
            self.live.update(self._region(line, "yellow"), refresh=True)
