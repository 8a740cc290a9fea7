"""The frame codec: one encoder and one validating decoder for every message type.

A frame is a msgpack array ``[version, type, field1, field2, ...]`` with fields in
declaration order. Arrays, not maps: they are smaller and faster to build, and the
schema lives in one place (``protocol.messages``) instead of in every frame.

Fields are checked for range as well as type at decode: ``Annotated[int, Range(lo, hi)]`` and
``Annotated[str, MaxLen(n)]``. An int without a ``Range`` must still fit in 64 signed bits, so
no value that a database column cannot hold gets past the decoder.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024  # also ZMQ_MAXMSGSIZE; a reply's text is bounded well below it


class FrameError(ValueError):
    """A frame that cannot be accepted. ``kind`` says why, for counters and logs."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class NotMsgpack(FrameError):
    def __init__(self, detail: str) -> None:
        super().__init__("not_msgpack", detail)


class UnknownVersion(FrameError):
    def __init__(self, detail: str) -> None:
        super().__init__("unknown_version", detail)


class UnknownType(FrameError):
    def __init__(self, detail: str) -> None:
        super().__init__("unknown_type", detail)


class BadField(FrameError):
    def __init__(self, detail: str) -> None:
        super().__init__("bad_field", detail)


class FrameTooLarge(FrameError):
    def __init__(self, detail: str) -> None:
        super().__init__("too_large", detail)


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """An int (or float) field's inclusive bounds."""

    lo: int
    hi: int


@dataclasses.dataclass(frozen=True, slots=True)
class MaxLen:
    """A str, list or dict field's largest length."""

    n: int


INT64 = Range(-(2**63), 2**63 - 1)

_REGISTRY: dict[int, type[Message]] = {}


class Message:
    """Base of every wire message. Subclasses are slotted dataclasses registered with ``@message``."""

    TYPE: ClassVar[int]
    _FIELDS: ClassVar[tuple[str, ...]]
    _CHECKS: ClassVar[tuple[tuple[str, tuple[type, ...], Range | None, int | None], ...]]

    def encode(self) -> bytes:
        return encode(self)


def _accepted_types(hint: Any) -> tuple[type, ...]:
    """The isinstance tuple for one annotated field type."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _accepted_types(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            out += _accepted_types(arg)
        return out
    if hint is type(None):
        return (type(None),)
    if origin is not None:
        hint = origin
    if hint is float:
        return (float, int)
    if hint is list:
        return (list, tuple)
    return (hint,)


def _bounds(hint: Any, accepted: tuple[type, ...]) -> tuple[Range | None, int | None]:
    """A field's (value range, largest length) from its ``Annotated`` metadata; every int gets INT64."""
    extras = typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[Annotated[...]]
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is typing.Annotated:
                extras = typing.get_args(arg)[1:]
    value_range = next((e for e in extras if isinstance(e, Range)), None)
    max_len = next((e.n for e in extras if isinstance(e, MaxLen)), None)
    if value_range is None and int in accepted and float not in accepted:
        value_range = INT64
    return value_range, max_len


def message(type_id: int):
    """Register a dataclass as a wire message with a fixed numeric type id."""

    def wrap(cls):
        cls = dataclasses.dataclass(slots=True)(cls)
        if type_id in _REGISTRY:
            raise RuntimeError(f"type id {type_id} used twice: {_REGISTRY[type_id].__name__}, {cls.__name__}")
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = dataclasses.fields(cls)
        cls.TYPE = type_id
        cls._FIELDS = tuple(f.name for f in fields)
        checks = []
        for f in fields:
            accepted = _accepted_types(hints[f.name])
            checks.append((f.name, accepted, *_bounds(hints[f.name], accepted)))
        cls._CHECKS = tuple(checks)
        cls._REQUIRED = sum(
            1 for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        _REGISTRY[type_id] = cls
        return cls

    return wrap


def encode(msg: Message) -> bytes:
    frame = [PROTOCOL_VERSION, msg.TYPE]
    frame.extend(getattr(msg, name) for name in msg._FIELDS)
    data = msgpack.packb(frame, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{type(msg).__name__} is {len(data)} bytes, limit {MAX_FRAME_BYTES}")
    return data


def decode(data: bytes, expect: tuple[type[Message], ...] | None = None) -> Message:
    """Validate and decode one frame. Raises a ``FrameError`` subclass; never anything else."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{len(data)} bytes, limit {MAX_FRAME_BYTES}")
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise NotMsgpack(str(exc) or type(exc).__name__) from None
    if not isinstance(frame, list) or len(frame) < 2:
        raise NotMsgpack("frame is not an array of [version, type, ...]")
    version, type_id = frame[0], frame[1]
    if version != PROTOCOL_VERSION:
        raise UnknownVersion(f"version {version!r}, expected {PROTOCOL_VERSION}")
    cls = _REGISTRY.get(type_id) if isinstance(type_id, int) else None
    if cls is None:
        raise UnknownType(f"type {type_id!r}")
    if expect is not None and cls not in expect:
        raise UnknownType(f"{cls.__name__} is not expected on this channel")
    values = frame[2:]
    if not cls._REQUIRED <= len(values) <= len(cls._FIELDS):
        raise BadField(f"{cls.__name__} takes {cls._REQUIRED}..{len(cls._FIELDS)} fields, got {len(values)}")
    for value, (name, accepted, value_range, max_len) in zip(values, cls._CHECKS):
        if not isinstance(value, accepted) or (value is True or value is False) and bool not in accepted:
            raise BadField(f"{cls.__name__}.{name} must be {'|'.join(t.__name__ for t in accepted)}, got {type(value).__name__}")
        if value is None:
            continue
        if value_range is not None and not value_range.lo <= value <= value_range.hi:
            raise BadField(f"{cls.__name__}.{name} must be from {value_range.lo} to {value_range.hi}, got {value}")
        if max_len is not None and len(value) > max_len:
            raise BadField(f"{cls.__name__}.{name} is {len(value)} long; the limit is {max_len}")
    return cls(*values)


def registered() -> dict[int, type[Message]]:
    return dict(_REGISTRY)
