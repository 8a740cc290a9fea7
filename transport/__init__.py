"""The one place that knows endpoints, socket options and their security.

Services and clients ask ``open_socket`` for a ready socket: right type, options set at
creation (LINGER, HWM, MAXMSGSIZE, CURVE), bound or connected. Endpoints default to ipc sockets
in a private run directory (mode 0700). ``CHATTER_COORDINATOR=tcp://HOST:PORT`` puts all seven
channels on tcp, on consecutive ports from PORT in the order of ``CHANNELS``; a channel's own
``CHATTER_ENDPOINT_<NAME>`` overrides either. Every tcp channel is encrypted and authenticated with
CURVE when keys are given (``curve.py``); a coordinator will not bind tcp beyond loopback without them.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import stat
import tempfile
from dataclasses import dataclass

import zmq

from protocol.codec import MAX_FRAME_BYTES
from transport import curve
from transport.errors import SetupError
from transport.queues import Outbox, offer, take, take_one  # noqa: F401 (the services' way to send and take)


@dataclass(frozen=True)
class Channel:
    name: str
    bind_type: int  # the coordinator's side; it binds every channel
    connect_type: int
    hwm: int


RPC = Channel("rpc", zmq.ROUTER, zmq.DEALER, 10_000)
STREAM = Channel("stream", zmq.PUB, zmq.SUB, 100_000)
JOBS = Channel("jobs", zmq.PUSH, zmq.PULL, 10)  # small: jobs wait at the coordinator, not in a busy generator's pipe
GEN_EVENTS = Channel("gen-events", zmq.PULL, zmq.PUSH, 100_000)
CONTROL = Channel("control", zmq.PUB, zmq.SUB, 10_000)
PERSIST = Channel("persist", zmq.PUSH, zmq.PULL, 100_000)
PERSIST_ACKS = Channel("persist-acks", zmq.PULL, zmq.PUSH, 100_000)

# CHATTER_COORDINATOR=tcp://HOST:PORT: channel i of this tuple is on PORT + i (rpc on PORT itself)
CHANNELS = (RPC, STREAM, JOBS, GEN_EVENTS, CONTROL, PERSIST, PERSIST_ACKS)

TOPIC_END = b" "  # a published frame is ``topic + b" " + payload``: one send, where topic and payload
# frames cost two (measured here: ~1 µs against ~5.5 µs a publish). The space also ends the topic, so
# subscribing to one session's prefix never matches a longer id that starts the same way.


def topic_prefix(topic: str) -> bytes:
    """What a subscriber subscribes to for ``topic`` (ZeroMQ matches subscriptions as prefixes)."""
    return topic.encode() + TOPIC_END


def published(topic: str, payload: bytes) -> bytes:
    return topic.encode() + TOPIC_END + payload


def payload_of(frame: bytes) -> bytes:
    """The payload of a published frame. Without a topic end the whole frame is returned, and decoding
    rejects it like any other bad frame."""
    end = frame.find(TOPIC_END)
    return frame[end + 1:] if end >= 0 else frame


LINGER_MS = 0  # a stopping process must never hang on unsent frames; resends cover the loss


IPC_PATH_MAX = 107  # sockaddr_un.sun_path on Linux, less its terminating NUL


def run_dir(path: str | None = None) -> str:
    """CHATTER_RUN_DIR (or ``path``), created 0700 if missing; refused if others can reach it."""
    path = path or os.environ.get("CHATTER_RUN_DIR") or os.path.join(tempfile.gettempdir(), f"chatter-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except FileExistsError:
        raise SetupError(f"the run directory CHATTER_RUN_DIR={path} is a file; name a directory") from None
    except OSError as exc:
        raise SetupError(f"cannot create the run directory CHATTER_RUN_DIR={path}: {exc.strerror}") from None
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise SetupError(f"the run directory CHATTER_RUN_DIR={path} must be owned by this user with mode 0700 "
                         f"(it is {stat.S_IMODE(info.st_mode):o}): chmod 700 it, or name another")
    return path


def endpoint(channel: Channel, run_dir_path: str | None = None) -> str:
    """CHATTER_ENDPOINT_<NAME> (tcp://host:port or ipc://path), else CHATTER_COORDINATOR's host and its port
    plus the channel's place in ``CHANNELS``, else ipc://<run dir>/<name>.sock."""
    setting = "CHATTER_ENDPOINT_" + channel.name.upper().replace("-", "_")
    override = os.environ.get(setting)
    if override:
        if not override.startswith(("tcp://", "ipc://")):
            raise SetupError(f"{setting} must be tcp://HOST:PORT or ipc://PATH, got {override!r}")
        return override
    base = os.environ.get("CHATTER_COORDINATOR")
    if base:
        host, port = coordinator_address(base)
        return f"tcp://{host}:{port + CHANNELS.index(channel)}"
    path = os.path.join(run_dir(run_dir_path), channel.name + ".sock")
    if len(os.fsencode(path)) > IPC_PATH_MAX:
        raise SetupError(f"the run directory CHATTER_RUN_DIR={os.path.dirname(path)} is too long for an ipc "
                         f"socket ({len(os.fsencode(path))} bytes with the socket's name, the limit is "
                         f"{IPC_PATH_MAX}): name a shorter one, or give tcp endpoints")
    return f"ipc://{path}"


def coordinator_address(value: str) -> tuple[str, int]:
    """CHATTER_COORDINATOR as (host, first port), refused in words unless it is tcp://HOST:PORT with room
    for every channel's port."""
    match = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):(\d{1,5})", value)
    last = len(CHANNELS) - 1
    if match is None or not 1 <= int(match.group(2)) <= 65535 - last:
        raise SetupError(f"CHATTER_COORDINATOR must be tcp://HOST:PORT with PORT from 1 to {65535 - last} (the "
                         f"channels take PORT to PORT+{last}), got {value!r}")
    return match.group(1), int(match.group(2))


def is_loopback(address: str) -> bool:
    """A tcp endpoint on this host only (127.0.0.0/8, ::1, localhost)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an interface: it may be reachable from elsewhere


LOCK_NAME = "coordinator.lock"


def claim_run_dir(run_dir_path: str | None = None) -> int:
    """Hold the run directory for this coordinator's lifetime (a lock file, released by the kernel when the
    process dies however it dies), so that a second coordinator refuses to start instead of unlinking the
    live one's sockets. Returns the lock's descriptor."""
    path = os.path.join(run_dir(run_dir_path), LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SetupError(f"another coordinator (pid {holder}) owns the run directory {os.path.dirname(path)}; "
                             "stop it first, or give this one its own CHATTER_RUN_DIR") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # not a file that its last owner unlinked while we waited
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_run_dir(fd: int, run_dir_path: str | None = None) -> None:
    os.unlink(os.path.join(run_dir(run_dir_path), LOCK_NAME))
    os.close(fd)


def open_socket(ctx: zmq.Context, channel: Channel, *, bind: bool, subscribe: bytes | None = None,
                run_dir_path: str | None = None, hwm: int | None = None) -> zmq.Socket:
    addr = endpoint(channel, run_dir_path)
    keys = curve.settings(coordinator=bind) if addr.startswith("tcp://") else None
    if bind and addr.startswith("tcp://") and keys is None and not is_loopback(addr) and not insecure_tcp():
        raise SetupError(f"refusing to bind {channel.name} on {addr} without CURVE: anyone who can reach it could "
                         "read every session. Make keys (chatter keys new coordinator; chatter keys new CLIENT) and "
                         "set CHATTER_CURVE_SECRET and CHATTER_CURVE_AUTHORIZED, or set CHATTER_INSECURE_TCP=1 "
                         "for a private network")
    sock = ctx.socket(channel.bind_type if bind else channel.connect_type)
    if keys is not None:
        keys.apply(sock, server=bind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm or channel.hwm)
    sock.setsockopt(zmq.RCVHWM, hwm or channel.hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 1024)  # + room for a topic
    if channel is RPC and bind:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client must not raise in the loop
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if bind:
        if addr.startswith("ipc://") and os.path.exists(addr[6:]):
            # stale: only the holder of the run directory (``claim_run_dir``) binds, and a killed one leaves
            # its files; binding over one would fail silently for peers
            os.unlink(addr[6:])
        try:
            sock.bind(addr)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise SetupError(f"cannot bind {channel.name} on {addr}: {exc.strerror} (see CHATTER_COORDINATOR and "
                             f"CHATTER_ENDPOINT_{channel.name.upper().replace('-', '_')})") from None
    else:
        sock.connect(addr)
    return sock


def insecure_tcp() -> bool:
    return os.environ.get("CHATTER_INSECURE_TCP", "") == "1"


def close_bound(sock: zmq.Socket) -> None:
    """Close a bound socket and remove its ipc file: libzmq leaves it behind on close."""
    addr = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(0)
    if addr.startswith("ipc://") and os.path.exists(addr[6:]):
        os.unlink(addr[6:])
