"""structlog set-up shared by every process: one key=value line per event on stderr, with tracebacks,
and every secret redacted (an upstream key, an Authorization header, a password in a URL)."""
from __future__ import annotations

import logging
import os
import re
import sys

import structlog

_PATTERNS = (
    (re.compile(r"(?i)\b(Bearer\s+)[^\s'\",)}\[\]]+"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:authorization|api[-_]?key|x-api-key)['\"]?\s*[:=]\s*['\"]?(?>(?:Bearer\s+)?))"
                r"[^\s'\",)}\[\]]+"), r"\1[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-[redacted]"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^:/@\s]+:)[^@\s]+@"), r"\1[redacted]@"),
)


# what each of the patterns needs to find anything: a text without any of these is left as it is, after one
# search instead of four substitutions (the coordinator redacted every log value: 16% of it under a burst, py-spy)
_ANY_PATTERN = re.compile(r"(?i)bearer|authorization|api[-_]?key|sk-|://")


def redact(text: str) -> str:
    """``text`` without secrets: the configured upstream key wherever it appears, bearer tokens,
    Authorization and API-key headers, ``sk-`` keys and URL passwords."""
    key = os.environ.get("OPENAI_API_KEY") or ""
    if len(key) >= 4 and key in text:
        text = text.replace(key, "[redacted]")
    if _ANY_PATTERN.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_event(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
        elif not isinstance(value, (int, float, bool, type(None))):
            event_dict[key] = redact(str(value))
    return event_dict


def configure(process: str) -> structlog.stdlib.BoundLogger:
    level = logging.getLevelName(os.environ.get("CHATTER_LOG_LEVEL", "INFO").upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # the traceback as text, so it is redacted like the rest
            _redact_event,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
            if sys.stderr.isatty() else structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "event"], sort_keys=True
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level if isinstance(level, int) else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(process=process)
