"""structlog set-up shared by every process: one JSON-ish line per event on stderr."""
from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(process: str) -> structlog.stdlib.BoundLogger:
    level = logging.getLevelName(os.environ.get("CHATTER_LOG_LEVEL", "INFO").upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False) if sys.stderr.isatty() else structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "event"], sort_keys=True
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level if isinstance(level, int) else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(process=process)
