from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from protocol import codec, messages as m

SAMPLES = [
    m.NewSession(1, "be brief", None),
    m.Send(2, "s", "héllo 🙂", "req-1", "mock-1"),
    m.Cancel(3, "s", None, 12),
    m.Snapshot(4, "s"), m.Status(5), m.History(6, "s"), m.Preview(7, "msg"),
    m.Regenerate(10, "s", "req-2"), m.Sessions(11, 20), m.ConfigureSession(12, "s", "be terse", 4096),
    m.Reply(8, True, {"a": [1, 2]}, None),
    m.Started("s", "g", "msg", "h", "[user]\nhi\n\n", 3),
    m.StreamDelta("s", "g", 10, "text", 4),
    m.Final("s", "g", "msg", "completed", 10, "h", {"tokens": 3}, None),
    m.Job("g", [{"role": "user", "content": "hi"}], "mock-1", {}, "h"),
    m.CancelGeneration("g"), m.CoordinatorHeartbeat(1.5),
    m.GenStarted("g", "gen-1"), m.GenDelta("g", 1, "t", 1, 2.5), m.GenDeltaBatch([["g", 1, "t", 1, 2.5]]), m.GenDone("g", 3, 10, "stop", 3, "server", 5),
    m.GenError("g", 0, "boom", 2), m.GenCancelled("g", 4), m.GeneratorHeartbeat("gen-1", 60, 4, 0),
    m.CreateMessage("msg", "s", "title", None, "user", "hi", "completed", 1.0),
    m.Append("msg", 0, "abc"), m.Finalize("msg", "completed", 3, "h", {}, None),
    m.InterruptOrphans("restart", ["msg"]), m.PersistAck("msg", 3, True), m.PersisterHello(1.0),
    m.OrphansInterrupted(2), m.PersisterStats(7, 3, 40, 1200, 0, 1, 5.0, "database or disk is full"),
    m.PersistRejected("msg", "integer out of range"), m.Bundle([m.Append("msg", 0, "abc").encode()]),
]


def test_every_registered_type_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(codec.registered().values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip(msg):
    assert codec.decode(codec.encode(msg)) == msg


@given(seq=st.integers(0, 2**62), text=st.text(max_size=300), tokens=st.integers(0, 10**6),
       at=st.floats(allow_nan=False, allow_infinity=False))
def test_delta_round_trip_any_values(seq, text, tokens, at):
    msg = m.GenDelta("g", seq, text, tokens, at)
    assert codec.decode(msg.encode()) == msg


def frame(*items) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


@pytest.mark.parametrize("data, kind", [
    (b"\xc1\xc1", "not_msgpack"),
    (b"", "not_msgpack"),
    (msgpack.packb({"v": 1}), "not_msgpack"),
    (frame(1), "not_msgpack"),
    (frame(2, m.Status.TYPE, 1), "unknown_version"),
    (frame("1", m.Status.TYPE, 1), "unknown_version"),
    (frame(1, 999, 1), "unknown_type"),
    (frame(1, "Status", 1), "unknown_type"),
    (frame(1, m.Append.TYPE, "msg", 0), "bad_field"),  # missing field
    (frame(1, m.Append.TYPE, "msg", 0, "t", "extra"), "bad_field"),  # too many
    (frame(1, m.Append.TYPE, "msg", "0", "t"), "bad_field"),  # ill-typed
    (frame(1, m.Append.TYPE, "msg", True, "t"), "bad_field"),  # a bool is not an offset
    (frame(1, m.Append.TYPE, None, 0, "t"), "bad_field"),
    (frame(1, m.Job.TYPE, "g", "not a list", "m", {}, "h"), "bad_field"),
    (b"\x00" * (codec.MAX_FRAME_BYTES + 1), "too_large"),
])
def test_decoder_rejects_bad_frames_with_a_typed_error(data, kind):
    with pytest.raises(codec.FrameError) as err:
        codec.decode(data)
    assert err.value.kind == kind


def test_decoder_rejects_a_type_not_expected_on_the_channel():
    with pytest.raises(codec.UnknownType):
        codec.decode(m.Append("msg", 0, "t").encode(), m.RPC_REQUESTS)


def test_encoder_refuses_an_oversized_frame():
    with pytest.raises(codec.FrameTooLarge):
        m.Append("msg", 0, "x" * (codec.MAX_FRAME_BYTES + 1)).encode()


@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_frame_error(data):
    try:
        codec.decode(data)
    except codec.FrameError:
        pass


def test_a_delta_batch_unpacks_its_valid_items_and_counts_the_rest():
    batch = codec.decode(m.GenDeltaBatch([["g", 1, "a", 1, 1.0], ["g", "2", "b", 1, 1.0], ["g", 2, "b", 1, 2],
                                          ["g", True, "c", 1, 1.0], "junk", ["g", 3]]).encode())
    good, bad = m.unpack_deltas(batch)
    assert good == [m.GenDelta("g", 1, "a", 1, 1.0), m.GenDelta("g", 2, "b", 1, 2)] and bad == 4


def test_bundles_keep_order_split_by_size_and_send_a_lone_frame_as_itself(monkeypatch):
    ops = [m.Append("msg", i, "x" * 100).encode() for i in range(30)]
    assert m.bundle(ops[:1]) == ops[:1]  # nothing to gain from wrapping one frame
    monkeypatch.setattr(m, "BUNDLE_BYTES", 1000)
    frames = m.bundle(ops)
    assert 3 <= len(frames) <= 5 and all(len(f) <= 1000 + 200 for f in frames)
    out = []
    for frame in frames:
        msgs, errors = m.unbundle(codec.decode(frame, m.PERSIST_OPS + (m.Bundle,)), m.PERSIST_OPS)
        assert errors == []
        out.extend(msgs)
    assert [op.offset for op in out] == list(range(30))


def test_a_bad_item_in_a_bundle_is_dropped_alone():
    frames = [m.Append("msg", 0, "a").encode(), b"\xc1garbage", "not bytes", m.PersistAck("x", 1, False).encode(),
              m.Bundle([m.Append("msg", 1, "b").encode()]).encode(), m.Append("msg", 1, "b").encode()]
    msgs, errors = m.unbundle(codec.decode(m.Bundle(frames).encode()), m.PERSIST_OPS)
    assert [(op.offset, op.text) for op in msgs] == [(0, "a"), (1, "b")]
    # garbage, a non-bytes item, a message of another channel, and a bundle inside a bundle
    assert [type(e) for e in errors] == [codec.NotMsgpack, codec.BadField, codec.UnknownType, codec.UnknownType]
