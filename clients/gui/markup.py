"""A reply's Markdown as the HTML the window shows, and the other pieces of its transcript."""
from __future__ import annotations

import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

from clients.show import tool_call_line


def _code(code: str, lang: str, attrs) -> str:
    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(noclasses=True, nowrap=False))


_MARKDOWN = MarkdownIt("commonmark", {"highlight": _code, "html": False}).enable("table")  # a model writes tables


def to_html(markdown: str) -> str:
    """A reply's Markdown as the HTML Qt shows: CommonMark, code highlighted by pygments, no raw HTML passed."""
    return _MARKDOWN.render(markdown)


def tool_call_html(call: dict) -> str:
    """A tool the model called, as a line of the transcript (escaped: its arguments are the model's text)."""
    return f"<p><code>{html.escape(tool_call_line(call))}</code></p>"

def branch_arrows(msg) -> str:
    """``< 2/3 >`` after a message that has other versions: each arrow a link to the branch through the one
    before or after it (none past the first or the last)."""
    if msg.sibling_count < 2:
        return ""
    at, count, key = msg.sibling_index, msg.sibling_count, html.escape(msg.message_id)
    back = f"<a href='branch:{key}/{at - 1}'>&lt;</a>" if at > 0 else "<span style='color:#bbb'>&lt;</span>"
    on = f"<a href='branch:{key}/{at + 1}'>&gt;</a>" if at < count - 1 else "<span style='color:#bbb'>&gt;</span>"
    return f" <span style='color:#666'>{back} {at + 1}/{count} {on}</span>"


def user_message_html(msg) -> str:
    """One of your messages in the transcript, in a bubble of its own apart from the replies: its Markdown (lines,
    lists and code keep their shape), then its Edit and Delete links and its versions' arrows."""
    key = html.escape(msg.message_id)
    links = (f"<a href='edit:{key}' style='color:#888'>✎ Edit</a>"
             f" <a href='drop:{key}' style='color:#888'>✕ Delete</a>")
    return user_bubble_html(msg.content, links + branch_arrows(msg))


def user_bubble_html(markdown: str, below: str = "") -> str:
    """A user's message as a shaded block of its own (a table: a block after it never joins its lists)."""
    footer = f"<p>{below}</p>" if below else ""
    return (f"<table width='100%' cellpadding='8' cellspacing='0' bgcolor='{USER_SHADE}'>"
            f"<tr><td>{to_html(markdown)}{footer}</td></tr></table>")


def stats_html(line: str) -> str:
    """A reply's stats line (its tokens, timings and status) under it, apart from its Markdown: a table of its own,
    so that it never becomes one more item of a list the reply ended with."""
    return (f"<table width='100%' cellspacing='0' cellpadding='2'><tr><td style='color:#666'>"
            f"<small>{html.escape(line)}</small></td></tr></table>")


USER_SHADE = "#eef3fb"
