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


_MARKDOWN = MarkdownIt("commonmark", {"highlight": _code, "html": False})


def to_html(markdown: str) -> str:
    """A reply's Markdown as the HTML Qt shows: CommonMark, code highlighted by pygments, no raw HTML passed."""
    return _MARKDOWN.render(markdown)


def tool_call_html(call: dict) -> str:
    """A tool the model called, as a line of the transcript (escaped: its arguments are the model's text)."""
    return f"<p><code>{html.escape(tool_call_line(call))}</code></p>"
