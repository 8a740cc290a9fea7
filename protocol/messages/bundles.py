"""Bundles: several frames of one point-to-point channel sent as one (persist and persist-acks)."""
from __future__ import annotations

from protocol import codec
from protocol.codec import Message


class Bundle(Message, tag=90):
    """Several encoded frames in one, in order: a sender with many messages for one peer in a loop turn
    sends them with one zmq call (the persist and persist-acks channels). Each item is validated as a
    frame of its own when it is unbundled; a bundle never holds a bundle."""

    frames: list


BUNDLE_BYTES = 1 << 20  # a bundle stays well under the frame limit


def bundle(frames: list[bytes]) -> list[bytes]:
    """The frames to send for ``frames``: one bundle per ~1 MiB, or a frame alone when only one is left."""
    out, group, size = [], [], 0
    for frame in frames:
        if group and size + len(frame) > BUNDLE_BYTES:
            out.append(_pack(group))
            group, size = [], 0
        group.append(frame)
        size += len(frame) + 5  # msgpack's bin header
    if group:
        out.append(_pack(group))
    return out


def _pack(group: list[bytes]) -> bytes:
    return group[0] if len(group) == 1 else Bundle(group).encode()


def unbundle(msg, expect: tuple) -> tuple[list, list]:
    """A decoded frame as the messages it carries: itself, or a bundle's items (each validated against
    ``expect``). Returns (messages, FrameErrors of the items that were dropped)."""
    if not isinstance(msg, Bundle):
        return [msg], []
    good, errors = [], []
    for item in msg.frames:
        try:
            if not isinstance(item, bytes):
                raise codec.BadField(f"Bundle item must be bytes, got {type(item).__name__}")
            good.append(codec.decode(item, expect))
        except codec.FrameError as err:
            errors.append(err)
    return good, errors
