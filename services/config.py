"""Settings read from the environment (and ``.env`` under honcho). One table, documented in the README."""
from __future__ import annotations

import os


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def env_int(name: str, default: int, lo: int | None = 0, hi: int | None = None) -> int:
    """An integer setting, checked for range at start: a process that cannot run refuses to start, with
    one line that names the setting and what would be right."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where = (f"from {lo} to {hi}" if hi is not None else f"at least {lo}") if lo is not None else f"at most {hi}"
        raise SystemExit(f"{name} must be {where}, got {value}")
    return value


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:  # NaN fails this too
        raise SystemExit(f"{name} must be from {lo:g} to {hi:g}, got {raw}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if not raw:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def database_url() -> str:
    return env_str("CHATTER_DATABASE_URL", "sqlite:///data/chatter.db")


def mock_port() -> int:
    return env_int("CHATTER_MOCK_PORT", 8700, lo=1, hi=65535)


def openai_base_url() -> str:
    return env_str("OPENAI_BASE_URL", f"http://127.0.0.1:{mock_port()}/v1")


def default_model() -> str:
    return env_str("CHATTER_MODEL", "mock-1")
