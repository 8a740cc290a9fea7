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


def _may_hold_secret(text: str) -> bool:
    """Whether ``_ANY_PATTERN`` could find something in ``text`` (a false yes costs only the full look). For ASCII
    text, substrings of its lower case: ~1 µs for a log line's values where the search took ~11 (``timeit``); the
    search itself for the rest, whose case rules (a Kelvin sign is a k to it) ``lower`` does not share."""
    if not text.isascii():
        return _ANY_PATTERN.search(text) is not None
    low = text.lower()
    return "bearer" in low or "authorization" in low or "api" in low or "sk-" in low or "://" in low


def redact(text: str) -> str:
    """``text`` without secrets: the configured upstream key wherever it appears, bearer tokens,
    Authorization and API-key headers, ``sk-`` keys and URL passwords."""
    key = os.environ.get("OPENAI_API_KEY") or ""
    if len(key) >= 4 and key in text:
        text = text.replace(key, "[redacted]")
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_event(_logger, _name, event_dict: dict) -> dict:
    """Every value of the event as text, redacted. One look over all of them first: a secret in any value is in
    their joined text too, and most events hold none (a value at a time, with a regular expression's search each,
    took ~20 µs of a line's ~39 here; the log lines were 22% of the coordinator under a burst, py-spy)."""
    texts = []
    for key, value in event_dict.items():
        if not isinstance(value, str):
            if isinstance(value, (int, float, bool, type(None))):
                continue
            value = event_dict[key] = str(value)
        texts.append(value)
    joined = "\n".join(texts)
    secret = os.environ.get("OPENAI_API_KEY") or ""
    if (len(secret) < 4 or secret not in joined) and not _may_hold_secret(joined):
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure(process: str) -> structlog.stdlib.BoundLogger:
    """Logging for a process; a CHATTER_LOG_LEVEL it cannot use stops the start, in one line."""
    name = (os.environ.get("CHATTER_LOG_LEVEL") or "info").strip().lower()
    if name not in LOG_LEVELS:
        raise SystemExit(f"CHATTER_LOG_LEVEL must be {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}, got {name!r}")
    level = logging.getLevelName(name.upper())
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
