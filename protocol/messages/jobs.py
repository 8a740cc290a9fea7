"""jobs and control: the coordinator's work for the generators (PUSH -> PULL, a long prompt in pieces of one
multipart message), and what it tells them (PUB -> SUB): cancel, its heartbeat, resume after a restart."""
from __future__ import annotations

from typing import Optional

import msgspec

from protocol import codec
from protocol.codec import PIECE_CHARS, Int, Message
from protocol.conversation import PromptMessage


class Job(Message, tag=30):
    generation_id: str
    messages: list[PromptMessage]  # sent upstream as they are
    model: str
    params: dict  # sent upstream as they are (temperature, max_tokens, ...): part of the prompt hash
    prompt_hash: str
    stream: Optional[bool] = None  # None: the generator's default (CHATTER_STREAM)
    # a continuation (the prompt ends with the reply so far): its texts go on from these seqs and lengths...
    seq_from: Int = 0
    length_from: Int = 0
    reasoning_seq_from: Int = 0
    reasoning_length_from: Int = 0
    # ...the server may repeat the prefilled reply first (llama-server): stripped once, where the stream begins
    # with it; and thinking is over once an answer began (its <think> tags are not looked for)
    strip_prefix: str = ""
    think_tags: str = ""  # "": the generator's CHATTER_THINK_TAGS


class JobPiece(Message, tag=34):
    """More of a job's text: a job whose prompt is larger than a frame goes as one multipart message (zmq
    delivers its frames together, to one generator), the ``Job`` with each long text cut to its first piece, then
    these in order. ``message`` is the index of the message whose content ``text`` goes on, or -1 for the job's
    ``strip_prefix``."""

    message: Int
    text: str


def job_frames(job: Job) -> list[bytes]:
    """A job as the frames of one multipart message, each of which fits (one frame for the usual job)."""
    texts = [str(msg.get("content", "")) for msg in job.messages] + [job.strip_prefix]
    if sum(len(text) for text in texts) <= PIECE_CHARS:
        return [job.encode()]
    pieces = [codec.pieces(text) for text in texts]
    head = msgspec.structs.replace(
        job, messages=[{**msg, "content": parts[0]} for msg, parts in zip(job.messages, pieces)],
        strip_prefix=pieces[-1][0])
    frames = [head.encode()]
    for index, parts in enumerate(pieces):
        frames += [JobPiece(-1 if index == len(job.messages) else index, part).encode() for part in parts[1:]]
    return frames


def job_of(frames: list[bytes]) -> Job:
    """The job of a multipart message (``job_frames``); a ``FrameError`` for any frame that is not right."""
    job = codec.decode(frames[0], (Job,))
    more: dict[int, list[str]] = {}
    for frame in frames[1:]:
        piece = codec.decode(frame, (JobPiece,))
        if not -1 <= piece.message < len(job.messages):
            raise codec.BadField(f"JobPiece.message: {piece.message} is not a message of its job")
        more.setdefault(piece.message, []).append(piece.text)
    if more:
        for index, parts in more.items():
            if index == -1:
                job.strip_prefix += "".join(parts)
            else:
                job.messages[index] = {**job.messages[index], "content": job.messages[index]["content"] + "".join(parts)}
    return job


class CancelGeneration(Message, tag=31):
    generation_id: str


class CoordinatorHeartbeat(Message, tag=32):
    sent_at: float
    instance: str = ""  # random per coordinator start: a generator that sees it change announces its generations


class ResumeGeneration(Message, tag=33):
    """A restarted coordinator adopts a generation: its holder sends the text beyond these offsets (the durable
    ones) in one ``GenCatchUp``, then goes on (or resends how it ended). Others ignore it."""

    generation_id: str
    offset: Int
    reasoning_offset: Int = 0


CONTROL_TOPIC_ALL = b""  # generators subscribe to everything on control: cancels are rare
