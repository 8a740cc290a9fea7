"""Argument types of the command line, shared by the commands that register with it (``clients/cli.py``,
``tools/commands.py``): numbers in a range, refused with a usage error that says why."""
from __future__ import annotations

import argparse


def in_range(convert, lo, hi, what: str):
    """An argparse type: a number (``convert``: int or float) from ``lo`` to ``hi``, else a usage error that
    says so."""
    def parse(raw: str):
        try:
            value = convert(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {what}") from None
        if not lo <= value <= hi:  # NaN fails this too
            shown = (f"{b:g}" if isinstance(b, float) else str(b) for b in (lo, hi))
            raise argparse.ArgumentTypeError("must be from {} to {}, got {}".format(*shown, raw))
        return value
    return parse


def int_in(lo: int, hi: int):
    return in_range(int, lo, hi, "an integer")


def float_in(lo: float, hi: float):
    return in_range(float, lo, hi, "a number")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(raw: str) -> float:
    """An argparse type: a span of time as a number and a unit (``30d``, ``12h``, ``90m``, ``45s``, ``2w``), in
    seconds."""
    number, unit = raw[:-1], raw[-1:]
    try:
        value = float(number) * DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a span of time: a number and s, m, h, d or w "
                                         "(30d, 12h)") from None
    if not 0 < value < 1e12:
        raise argparse.ArgumentTypeError(f"{raw!r} must be more than nothing, and less than forever")
    return value
