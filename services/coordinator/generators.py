"""The generators the coordinator hears from: their heartbeats, which are alive, and what their servers told them
(the models' context lengths, what the server is). From those it answers how a prompt is budgeted and how a reply
is continued. Pure, like all of the machine."""
from __future__ import annotations

from dataclasses import dataclass, field

from protocol import messages as m
from services.config import CoordinatorSettings
from services.coordinator.effects import Log

JOB_TRAVEL_S = 1.0  # a job sent this long before a generator's heartbeat with room has reached that generator
# what auto makes of a server's /v1/models owned_by
SERVER_STYLES = {"vllm": "vllm", "llamacpp": "prefill"}


@dataclass
class GeneratorInfo:
    generator_id: str
    last_seen: float
    capacity_free: int = 0
    active: int = 0
    contexts: dict = field(default_factory=dict)  # model -> context length, as this generator's server tells it
    server: str = ""  # what its server says it is (/v1/models owned_by)
    retries: int = 0
    pid: int = 0


class Generators:
    def __init__(self, settings: CoordinatorSettings, counters: dict) -> None:
        self.settings, self.counters = settings, counters
        self.known: dict[str, GeneratorInfo] = {}
        self.last_server = ""  # what the last generator to tell said its server is (/v1/models owned_by)

    def on_heartbeat(self, msg: m.GeneratorHeartbeat, now: float, out: list) -> None:
        info = self.known.get(msg.generator_id)
        if info is None:
            info = self.known[msg.generator_id] = GeneratorInfo(msg.generator_id, now)
            out.append(Log("generator_joined", {"generator_id": msg.generator_id}))
        info.last_seen, info.capacity_free, info.active, info.retries = now, msg.capacity_free, msg.active, msg.retries
        info.pid = msg.pid
        info.contexts = msg.contexts or {}
        info.server = msg.server
        if msg.server:
            self.last_server = msg.server  # what a server said it is outlives its generator (continue style)

    def lost(self, now: float, out: list) -> list[str]:
        """The generators that stopped heartbeating (CHATTER_GENERATOR_DEAD_MS): forgotten, logged and counted."""
        dead_after = self.settings.generator_dead_ms / 1000
        gone = [g for g, info in self.known.items() if now - info.last_seen > dead_after]
        for generator_id in gone:
            del self.known[generator_id]
            self.counters["generators_lost"] += 1
            out.append(Log("generator_lost", {"generator_id": generator_id}))
        return gone

    def heard_with_room_since(self) -> float | None:
        """When every live generator had last said it has room, less a job's travel: a job sent before then and
        not taken is in no generator's queue. None when there is no generator, or one is full."""
        if not self.known or any(g.capacity_free <= 0 for g in self.known.values()):
            return None
        return min(g.last_seen for g in self.known.values()) - JOB_TRAVEL_S

    def retries(self) -> int:
        return sum(g.retries for g in self.known.values())

    def continue_style(self, session_style: str | None) -> tuple[str, str]:
        """How a reply is continued, and why: the session's own, else CHATTER_CONTINUE_STYLE, else (auto) from
        what the live generators' servers say they are in /v1/models (``owned_by``), all alike."""
        if session_style:
            return session_style, "this session's setting (/config continue_style)"
        if self.settings.continue_style != "auto":
            return self.settings.continue_style, "CHATTER_CONTINUE_STYLE"
        # a generator that has not asked its server yet (just started) tells nothing; one that did tells until
        # another says otherwise, also once it is gone (its replies are continued on the one restarted)
        servers = {g.server for g in self.known.values() if g.server}
        if len(servers) > 1:
            return "none", f"auto: the generators' servers differ ({', '.join(sorted(servers))})"
        if not servers and not self.last_server:
            if self.known:
                return "none", "auto: the server does not say what it is (/v1/models owned_by)"
            return "none", "auto: no generator is connected to tell what its server is"
        server = servers.pop() if servers else self.last_server
        style = SERVER_STYLES.get(server, "none")
        return style, f"auto: the server says it is {server!r} (/v1/models owned_by)"

    def context(self, model: str) -> int | None:
        """The model's context length: the live generators' servers first (the smallest, if they differ), else
        CHATTER_MODEL_CONTEXT's."""
        told = [g.contexts[model] for g in self.known.values() if model in g.contexts]
        return min(told) if told else self.settings.model_contexts.get(model)

    def budget(self, sess, model: str | None = None) -> int:
        """The input budget of a prompt in session ``sess``: its own; else from the model's context length, less
        room for the reply (the session's max_tokens, else a quarter of the context); else
        CHATTER_MAX_INPUT_TOKENS."""
        if sess.max_input_tokens:
            return sess.max_input_tokens
        context = self.context(model or sess.model or self.settings.default_model)
        if context:
            reserve = sess.params.get("max_tokens") or context // 4
            return max(1, context - min(reserve, context - 1))
        return self.settings.max_input_tokens
