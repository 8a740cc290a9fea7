"""Settings read from the environment (and ``.env`` under honcho). One table, documented in the README."""
from __future__ import annotations

import os


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if not raw:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def database_url() -> str:
    return env_str("CHATTER_DATABASE_URL", "sqlite:///data/chatter.db")


def mock_port() -> int:
    return env_int("CHATTER_MOCK_PORT", 8700)


def openai_base_url() -> str:
    return env_str("OPENAI_BASE_URL", f"http://127.0.0.1:{mock_port()}/v1")


def default_model() -> str:
    return env_str("CHATTER_MODEL", "mock-1")
