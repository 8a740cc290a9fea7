from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from protocol import codec, messages as m, answers
from protocol.messages import bundles as bundle_module

SAMPLES = [
    m.NewSession(1, "be brief", None),
    m.Send(2, "s", "héllo 🙂", "req-1", "mock-1"),
    m.Cancel(3, "s", None, 12),
    m.Snapshot(4, "s"), m.Status(5), m.History(6, "s"), m.Preview(7, "msg"),
    m.Regenerate(10, "s", "req-2"), m.Continue(13, "s", "req-3"), m.Sessions(11, 20), m.ConfigureSession(12, "s", "be terse", 4096),
    m.ResolveSession(13, "ab12"),
    m.Reply(8, True, answers.Cancelled(generation_id="g", length=3), None), m.Reply(9, False, None, "no"),
    m.Started("s", "g", "msg", "h", "[user]\nhi\n\n", 3),
    m.StreamDelta("s", "g", 10, "text", 4), m.StreamToolCall("s", "g", 0, "call_1", "get_weather", 0, '{"city"'),
    m.GenToolCall("g", 0, "call_1", "get_weather", '{"city": "Oslo"}'),
    m.SaveToolCalls("msg", [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
    m.Final("s", "g", "msg", "completed", 10, "h", {"tokens": 3}, None),
    m.Job("g", [{"role": "user", "content": "hi"}], "mock-1", {}, "h"), m.JobPiece(0, "more of it"),
    m.CancelGeneration("g"), m.CoordinatorHeartbeat(1.5, "inst"), m.ResumeGeneration("g", 3, 1),
    m.GenAnnounce("gen-1", [m.LiveGeneration("g", 2, 5, 1, 3, False)]), m.GenCatchUp("g", 2, 3, "xy", 1, 1, "ab"),
    m.GenStarted("g", "gen-1"), m.GenDelta("g", 1, "t", 1, 2.5), m.GenDeltaBatch([m.DeltaItem("g", 1, "t", 1, 2.5)]), m.GenDone("g", 3, 10, "stop", 3, "server", 5),
    m.GenError("g", 0, "boom", 2), m.GenCancelled("g", 4), m.GeneratorHeartbeat("gen-1", 60, 4, 0),
    m.CreateMessage("msg", "s", "title", None, "user", "hi", "completed", 1.0),
    m.Append("msg", 0, "abc"), m.Finalize("msg", "completed", 3, "h", {}, None),
    m.InterruptOrphans("restart", ["msg"], "c1.2"), m.SaveSession("s1", "", "be brief", 4000, 1.5), m.SessionSaved("s1", 1.5),
    m.Reopen("msg", "gen2", "abc", "", m.ContinuedPrompt([{"role": "assistant", "content": "abc", "prefix": True}],
                                                         "h", "p")), m.PersistAck("msg", 3, True), m.PersisterHello(1.0),
    m.OrphansInterrupted(2, "c1.2"), m.PersisterStats(7, 3, 40, 1200, 0, 1, 5.0, "database or disk is full"),
    m.PersistRejected("msg", "integer out of range"), m.Bundle([m.Append("msg", 0, "abc").encode()]),
    m.RenameSession(14, "s", "Trip to Lyon ✈"), m.DeleteSessions(15, ["s", "t"]),
    m.SessionChanged("s", "renamed", "Trip to Lyon ✈"), m.SessionChanged("s", "deleted"),
    m.PurgeSessions(["s", "t"], "op-1"), m.SessionsPurged("op-1", ["s"]),
    m.SaveSession("s1", "By hand", None, None, 2.5, session_title_set=True), m.Search(16, "naïve \"a phrase\" stream*"),
    m.EditMessage(17, "s", "3", "again", "r-1"), m.SwitchBranch(18, "s", "m1", 2), m.ForkSession(19, "s", None),
    m.SessionTree(70, "s", 5000), m.DeleteBranch(71, "s", "m1"),
    m.PurgeMessages("s", ["m1", "m2"], None, "op-2"), m.ExportSession(72, "s", "m1", 3, 0), m.ReplyOf(74, "m1", 5),
    m.FindTurn(79, "a" * 64, "b" * 64, "ada"),
    m.Send(2, "s", "hi", "r", None, "m1"), m.AddUser(75, "ada", "a" * 64), m.RevokeUser(76, "ada"), m.Users(77),
    m.WhoIs(78, "b" * 64), m.SaveUser("ada", "a" * 64, 1.0, None, "op-3"), m.UserSaved("op-3"),
    m.ImportSession(73, m.SessionRecord(session_id="s", title="t", active_leaf="m1"),
                    [m.MessageRecord(message_id="m1", session_id="s", role="user", content="hi", status="completed",
                                     created_at=1.0, parent_id="")], last=False),
    m.CreateMessage("msg2", "s", "t", None, "assistant", "hi", "completed", 1.0, parent_id="msg",
                    copied=m.Copied("thought", {"tokens": 1}, None, "ab", None)),
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


def frame(version, *message) -> bytes:
    return msgpack.packb([version, list(message)], use_bin_type=True)


@pytest.mark.parametrize("data, kind", [
    (b"\xc1\xc1", "not_msgpack"),
    (b"", "not_msgpack"),
    (msgpack.packb({"v": 1}), "not_msgpack"),
    (msgpack.packb([2]), "not_msgpack"),
    (msgpack.packb([2, m.Status.TYPE, 1]), "not_msgpack"),  # version 1's flat frame
    (frame(1, m.Status.TYPE, 1), "unknown_version"),
    (frame("2", m.Status.TYPE, 1), "unknown_version"),
    (frame(2, 999, 1), "unknown_type"),
    (frame(2, "Status", 1), "unknown_type"),
    (frame(2, m.Append.TYPE, "msg", 0), "bad_field"),  # missing field
    (frame(2, m.Append.TYPE, "msg", "0", "t"), "bad_field"),  # ill-typed
    (frame(2, m.Append.TYPE, "msg", True, "t"), "bad_field"),  # a bool is not an offset
    (frame(2, m.Append.TYPE, None, 0, "t"), "bad_field"),
    (frame(2, m.Job.TYPE, "g", "not a list", "m", {}, "h"), "bad_field"),
    (frame(2, m.GenDeltaBatch.TYPE, [["g", 1, "a", 1, 1.0], ["g", "2", "b", 1, 1.0]]), "bad_field"),
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


def test_a_bad_field_is_named_by_its_message_and_field():
    with pytest.raises(codec.BadField, match=r"Append\.offset: Expected `int`, got `str`"):
        codec.decode(frame(2, m.Append.TYPE, "msg", "0", "t"))


def test_trailing_fields_of_a_newer_version_are_ignored():
    later = frame(2, m.Append.TYPE, "msg", 0, "t", True, "a field from later")
    assert codec.decode(later) == m.Append("msg", 0, "t", True)


def test_an_earlier_version_without_the_trailing_fields_decodes_with_their_defaults():
    assert codec.decode(frame(2, m.Append.TYPE, "msg", 0, "t")) == m.Append("msg", 0, "t", thinking=False)


def test_a_delta_batch_decodes_to_typed_items():
    batch = codec.decode(m.GenDeltaBatch([["g", 1, "a", 1, 1.0], ["g", 2, "b", 1, 2], ["g", 1, "t", 1, 3, True]]).encode())
    assert batch.deltas == [m.DeltaItem("g", 1, "a", 1, 1.0), m.DeltaItem("g", 2, "b", 1, 2.0),
                            m.DeltaItem("g", 1, "t", 1, 3.0, thinking=True)]


def test_every_message_reads_and_writes_as_plain_msgpack():
    """Any msgpack client can speak the protocol: the ``msgpack`` package reads what we write, and what it
    writes from the same values decodes to the same message."""
    for msg in SAMPLES:
        plain = msgpack.unpackb(msg.encode(), raw=False, strict_map_key=False)
        assert plain[0] == codec.PROTOCOL_VERSION and plain[1][0] == msg.TYPE
        assert codec.decode(msgpack.packb(plain, use_bin_type=True)) == msg


def test_bundles_keep_order_split_by_size_and_send_a_lone_frame_as_itself(monkeypatch):
    ops = [m.Append("msg", i, "x" * 100).encode() for i in range(30)]
    assert m.bundle(ops[:1]) == ops[:1]  # nothing to gain from wrapping one frame
    monkeypatch.setattr(bundle_module, "BUNDLE_BYTES", 1000)
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


def _int_fields(t):
    """Every int type reachable in a field's type (through Optional, lists, tuples and structs)."""
    import msgspec.inspect as mi
    if isinstance(t, mi.IntType):
        yield t
    for sub in getattr(t, "types", ()) + ((t.item_type,) if hasattr(t, "item_type") else ()) + \
            ((t.item_types if isinstance(getattr(t, "item_types", None), tuple) else ())):
        yield from _int_fields(sub)
    if isinstance(t, mi.StructType):
        for f in t.fields:
            yield from _int_fields(f.type)


def test_every_integer_field_of_every_message_is_bounded_at_decode():
    """No integer that a database column cannot hold gets past the decoder; rpc fields have tighter bounds."""
    import msgspec.inspect as mi
    for cls in codec.registered().values():
        for f in mi.type_info(cls).fields:
            for t in _int_fields(f.type):
                assert t.ge is not None and t.le is not None, f"{cls.__name__}.{f.name}"
                assert -(2**63) <= t.ge <= t.le <= 2**63 - 1


@pytest.mark.parametrize("cls, index, bad, good", [
    (m.Sessions, 1, 0, 1), (m.Sessions, 1, 100_001, 100_000), (m.Sessions, 1, 2**64 - 1, 50),
    (m.NewSession, 3, 2**31, 2**31 - 1), (m.NewSession, 3, -1, 0), (m.Cancel, 3, -1, 0),
    (m.Send, 1, "s" * 65, "s" * 64), (m.Send, 4, "m" * 129, "m" * 128), (m.Send, 3, "r" * 129, "r" * 128),
    (m.ConfigureSession, 5, {str(i): i for i in range(17)}, {"max_tokens": 5}),
    (m.Status, 0, 2**63, 2**63 - 1), (m.Status, 0, 2**64 - 1, -(2**63)),
])
def test_values_out_of_a_fields_bounds_are_refused_with_its_name(cls, index, bad, good):
    sample = {m.Sessions: m.Sessions(1, 5), m.NewSession: m.NewSession(1, None, None, 5),
              m.Cancel: m.Cancel(1, "s", None, 0), m.Send: m.Send(1, "s", "t", "r", "m"),
              m.ConfigureSession: m.ConfigureSession(1, "s"), m.Status: m.Status(1)}[cls]
    values = [getattr(sample, f) for f in cls._FIELDS]
    for value, ok in ((bad, False), (good, True)):
        values[index] = value
        data = frame(codec.PROTOCOL_VERSION, cls.TYPE, *values)
        if ok:
            assert getattr(codec.decode(data), cls._FIELDS[index]) == value
        else:
            with pytest.raises(codec.BadField, match=f"{cls.__name__}.{cls._FIELDS[index]}"):
                codec.decode(data)


@given(st.sampled_from(m.RPC_REQUESTS), st.lists(st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=80), st.none(), st.booleans(), st.binary(max_size=8),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3)),
    min_size=1, max_size=8))
def test_any_values_in_a_request_decode_or_raise_frame_error(cls, values):
    import msgspec.inspect as mi
    try:
        msg = codec.decode(frame(codec.PROTOCOL_VERSION, cls.TYPE, *values))
    except codec.FrameError:
        return
    for f in mi.type_info(cls).fields:  # what decoded is within every bound
        value = getattr(msg, f.name)
        for t in [f.type, *getattr(f.type, "types", ())]:
            if isinstance(t, mi.IntType) and isinstance(value, int):
                assert t.ge <= value <= t.le
            if isinstance(t, (mi.StrType, mi.DictType)) and t.max_length is not None and value is not None:
                assert len(value) <= t.max_length


@pytest.mark.parametrize("strip", ["", "One, two," * 70_000])
def test_a_job_larger_than_a_frame_goes_as_pieces_of_one_message_and_joins_whole(strip):
    """A 10 MB prompt (a long conversation with a 1M-token model): frames that each fit, joined to the very job."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "über 🙂 " * 600_000},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "数据" * 800_000, "prefix": True}]
    job = m.Job("g", messages, "mock-1", {"temperature": 0.5}, "h", strip_prefix=strip)
    with pytest.raises(codec.FrameTooLarge):
        job.encode()
    frames = m.job_frames(job)
    assert len(frames) > 3 and max(map(len, frames)) <= codec.MAX_FRAME_BYTES
    assert m.job_of(frames) == job
    assert m.job_frames(m.Job("g", messages[:1], "mock-1", {}, "h")) == [m.Job("g", messages[:1], "mock-1", {}, "h").encode()]
    with pytest.raises(codec.FrameError):
        m.job_of([frames[0], m.JobPiece(9, "x").encode()])  # a piece of no message of its job
