"""Fuzzed frames for the coordinator's bound sockets, seeded, with their own oracle: pure, used by
``tests/integration/test_fuzz.py`` (10,000 frames a socket) and ``bench/fuzz.py`` (100,000).

Each frame is one of: random bytes; msgpack of a wrong shape; a right type id with wrong field types or
counts; huge and negative integers; deep nesting; a bundle with good and bad items mixed; a delta for a
generation nobody knows. ``expected_errors`` says how many frame errors the receiver must count for a frame,
by the same decoding the receiver does (``services.shell.decode_bundle``), so a test can account for every
frame. Frames over the size limit are made apart (``oversized``).
"""
from __future__ import annotations

import random

import msgpack

from protocol import codec, messages as m

KINDS = ("random_bytes", "wrong_shape", "wrong_fields", "extreme_ints", "deep_nesting", "mixed_bundle",
         "unknown_delta")
EXTREME_INTS = (2**64 - 1, 2**63, -(2**63), -1, -(2**31), 2**31, 2**32)
SOCKETS = {"rpc": m.RPC_REQUESTS, "gen-events": m.GEN_EVENTS, "persist-acks": m.PERSIST_ACKS}


def _value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return rng.choice(EXTREME_INTS + (0, 1, 7))
    if choice == 1:
        return rng.random() * 10 ** rng.randrange(-3, 20)
    if choice == 2:
        return "".join(rng.choice("ab\x00é🙂 ") for _ in range(rng.randrange(12)))
    if choice == 3:
        return rng.randbytes(rng.randrange(12))
    if choice == 4:
        return rng.choice((None, True, False))
    if choice == 5:
        return rng.choice((float("nan"), float("inf"), -0.0))
    if choice == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 7:
        return {str(_value(rng, depth + 1))[:8]: _value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return {rng.randrange(5): None}  # a map with an integer key


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(rng: random.Random, socket_name: str, kind: str) -> bytes:
    types = SOCKETS[socket_name]
    version = codec.PROTOCOL_VERSION
    if kind == "random_bytes":
        return rng.randbytes(rng.randrange(1, 200))
    if kind == "wrong_shape":
        return _pack(rng.choice(([], [version], {"v": version}, [version, {}], [version, [], []], "text",
                                 [version, [_value(rng)]], _value(rng))))
    if kind in ("wrong_fields", "extreme_ints"):
        cls = rng.choice(types)
        count = max(0, len(cls._FIELDS) + rng.randrange(-2, 3))
        make = (lambda: rng.choice(EXTREME_INTS)) if kind == "extreme_ints" else (lambda: _value(rng))
        return _pack([version, [cls.TYPE, *(make() for _ in range(count))]])
    if kind == "deep_nesting":
        depth = rng.randrange(100, 3000)
        return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]], packed by hand: msgpack-python refuses to nest so deep
    if kind == "mixed_bundle":
        items = []
        for _ in range(rng.randrange(1, 8)):
            good = rng.random() < 0.5
            items.append(_good(rng, socket_name) if good else frame(rng, socket_name, rng.choice(KINDS[:4])))
        return m.Bundle(items).encode()
    if kind == "unknown_delta":
        if socket_name == "gen-events":
            gen_id = f"fuzz-{rng.randrange(10**9)}"
            return m.GenDeltaBatch([[gen_id, rng.randrange(1, 5), "x", 1, 1.0]]).encode()
        return _good(rng, socket_name)
    raise ValueError(kind)


def _good(rng: random.Random, socket_name: str) -> bytes:
    """A well-formed frame of the socket that changes nothing that matters: for unknown ids."""
    unknown = f"fuzz-{rng.randrange(10**9)}"
    if socket_name == "rpc":
        return m.Snapshot(rng.randrange(1, 2**31), unknown).encode()
    if socket_name == "gen-events":
        return m.GenDelta(unknown, 1, "x", 1, 1.0).encode()
    return m.PersistAck(unknown, rng.randrange(100), False).encode()


def frames(seed: int, socket_name: str, count: int) -> list[bytes]:
    """``count`` fuzzed frames for one socket, every kind in turn, reproducible from ``seed``."""
    rng = random.Random(f"{seed}-{socket_name}")
    return [frame(rng, socket_name, KINDS[i % len(KINDS)]) for i in range(count)]


def expected_errors(payload: bytes, socket_name: str) -> int:
    """How many frame errors the receiver counts for this frame: the bundle's bad items, or the frame itself."""
    from services.shell import decode_bundle
    if socket_name == "rpc":  # requests come one a frame: a bundle is no request
        try:
            codec.decode(payload, SOCKETS[socket_name])
            return 0
        except codec.FrameError:
            return 1
    return len(decode_bundle(payload, SOCKETS[socket_name])[1])


def oversized() -> list[tuple[bytes, int]]:
    """Frames over the frame limit, with the errors the receiver counts: one just over it, which ZeroMQ lets
    through and the decoder refuses (counted); one past ZMQ_MAXMSGSIZE, whose connection ZeroMQ drops before
    any process sees it (not counted)."""
    def delta(chars: int) -> bytes:
        return _pack([codec.PROTOCOL_VERSION, [m.GenDelta.TYPE, "fuzz-big", 1, "x" * chars, 1, 1.0]])
    return [(delta(codec.MAX_FRAME_BYTES + 16), 1), (delta(codec.MAX_FRAME_BYTES + 64 * 1024), 0)]


SOCKET_KINDS = {"rpc": "DEALER", "gen-events": "PUSH", "persist-acks": "PUSH"}


def run(stack, seed: int, count: int) -> dict:
    """Fuzz a running ``tools.spawn.LocalStack``: ``count`` frames into each socket the coordinator receives on,
    then the oversized ones, while a subscriber to everything never reads. Returns the frames sent, the frame
    errors the coordinator must count (by the oracle), and the seconds the sending took."""
    import time

    import zmq

    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 5000)  # deliver it all before closing
    deaf = ctx.socket(zmq.SUB)  # PUB must drop for it, never block
    deaf.setsockopt(zmq.SUBSCRIBE, b"")
    deaf.connect(f"ipc://{stack.run_dir / 'stream.sock'}")
    bad, sent, started = 0, 0, time.monotonic()
    plan = [(name, kind, frames(seed, name, count)) for name, kind in SOCKET_KINDS.items()]
    plan.append(("gen-events", "PUSH", [payload for payload, _ in oversized()]))
    bad += sum(counted for _, counted in oversized())  # refused by the decoder, or dropped by ZeroMQ (0)
    try:
        for name, kind, payloads in plan:
            sock = ctx.socket(getattr(zmq, kind))
            sock.connect(f"ipc://{stack.run_dir / (name + '.sock')}")
            for payload in payloads:
                if len(payload) <= codec.MAX_FRAME_BYTES:  # the oversized are counted above
                    bad += expected_errors(payload, name)
                sock.send(payload)
                sent += 1
                while kind == "DEALER" and sock.poll(0):
                    sock.recv()  # the answers to what could be answered
            sock.close()
    finally:
        deaf.close()
        ctx.term()
    return {"frames": sent, "bad_frames_expected": bad, "send_s": round(time.monotonic() - started, 2)}
