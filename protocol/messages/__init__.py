"""Every message Chatter's processes exchange, defined once.

Type ids are the wire bytes and never change meaning. Channels (see ``transport``, the package of sockets and endpoints):
rpc (client <-> coordinator), stream (coordinator -> clients, topic = session id, see ``transport.published``),
jobs (coordinator -> generators), gen-events (generators -> coordinator),
control (coordinator -> generators), persist and persist-acks (coordinator <-> persister).
"""
from __future__ import annotations

from protocol import codec
from protocol.codec import Message
from protocol.conversation import MessageRecord, PromptMessage  # noqa: F401 (part of this schema: m.MessageRecord)
from protocol.messages.rpc import *  # noqa: F401,F403
from protocol.messages.stream import *  # noqa: F401,F403
from protocol.messages.jobs import *  # noqa: F401,F403
from protocol.messages.generator_events import *  # noqa: F401,F403
from protocol.messages.persist import *  # noqa: F401,F403
from protocol.messages.bundles import *  # noqa: F401,F403
from protocol.messages.bundles import _pack  # noqa: F401

codec.register(*[cls for cls in list(globals().values())
                 if isinstance(cls, type) and issubclass(cls, Message) and cls is not Message])
