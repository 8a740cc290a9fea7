"""CURVE on tcp channels, through pyzmq's ``zmq.auth``: this process's keys from the environment, applied to
its sockets; the coordinator's authorized keys, read again when their directory changes; and what a
refused handshake means, in words.

- ``CHATTER_CURVE_SECRET=FILE``: this process's or client's own key pair (``NAME.key_secret``, as
  ``chatter keys new NAME`` writes it).
- ``CHATTER_CURVE_SERVER=FILE``: the coordinator's public key (``coordinator.key``), for every process and
  client but the coordinator.
- ``CHATTER_CURVE_AUTHORIZED=DIR``: the coordinator's: the public keys (``*.key``) allowed in.

ipc channels need none of this: the run directory's mode (0700) is their lock.
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from transport.errors import SetupError

ZAP_DOMAIN = b"chatter"
REFUSED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _setup_error(text: str) -> Exception:
    return SetupError(text)


@dataclass(frozen=True)
class Keys:
    public: bytes
    secret: bytes
    server: bytes | None  # the coordinator's public key; None on the coordinator itself
    authorized: str | None = None  # the coordinator's: the directory of the public keys it lets in

    def apply(self, sock: zmq.Socket, *, server: bool) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        if server:
            sock.curve_server = True
            sock.zap_domain = ZAP_DOMAIN
        else:
            sock.curve_serverkey = self.server


def settings(*, coordinator: bool) -> Keys | None:
    """This process's CURVE keys, or None when it has none; a setting that is half there, names a missing
    file or holds no key is refused in one sentence naming it."""
    secret_file = os.environ.get("CHATTER_CURVE_SECRET")
    server_file = os.environ.get("CHATTER_CURVE_SERVER")
    authorized = os.environ.get("CHATTER_CURVE_AUTHORIZED")
    if not secret_file:
        if server_file or (coordinator and authorized):
            raise _setup_error("CURVE needs this process's own key pair too: set CHATTER_CURVE_SECRET to its "
                               "NAME.key_secret (chatter keys new NAME writes one)")
        return None
    public, secret = _load(secret_file, "CHATTER_CURVE_SECRET", need_secret=True)
    if coordinator:
        if not authorized:
            raise _setup_error("a coordinator with CURVE keys needs CHATTER_CURVE_AUTHORIZED: the directory of the "
                               "public keys (NAME.key) allowed in")
        return Keys(public, secret, None, authorized)
    if not server_file:
        raise _setup_error("CHATTER_CURVE_SECRET is set but not CHATTER_CURVE_SERVER: name the coordinator's public "
                           "key file (coordinator.key)")
    server, _ = _load(server_file, "CHATTER_CURVE_SERVER", need_secret=False)
    return Keys(public, secret, server)


def _load(path: str, setting: str, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    if not os.path.isfile(path):
        raise _setup_error(f"{setting}={path}: no such file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except Exception:  # pyzmq's own words for a file without a key are a ValueError or worse
        raise _setup_error(f"{setting}={path} holds no CURVE key in zmq.auth's format (chatter keys new NAME "
                           "writes NAME.key and NAME.key_secret)") from None
    if public is None or (need_secret and secret is None):
        what = "secret key (NAME.key_secret)" if need_secret else "public key"
        raise _setup_error(f"{setting}={path} holds no {what}")
    if need_secret and stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        raise _setup_error(f"{setting}={path} is readable by others: chmod 600 it (a secret key is its owner's)")
    return public, secret


def new_keys(name: str, directory: str) -> tuple[Path, Path]:
    """``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) in ``directory``, in zmq.auth's format."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a key's name is a plain file name, got {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists already; remove it first, or choose another name")
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)  # a public key is for handing out
    return public, secret


class AuthorizedKeys:
    """The coordinator's ZAP handler (pyzmq's ThreadAuthenticator, with this object as its credentials
    provider): a client key is let in when its public key file is in CHATTER_CURVE_AUTHORIZED. The directory
    is read again when it changes (``reload_if_changed``, from the coordinator's loop); refusals are counted."""

    def __init__(self, ctx: zmq.Context, directory: str, log) -> None:
        self.directory, self.log = Path(directory), log
        self.allowed: frozenset[bytes] = frozenset()
        self.refused_keys = 0
        self._logged: dict[bytes, float] = {}
        self._signature: tuple = ()
        self.allowed, self._signature = self._read(strict=True)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN.decode(), credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """On the authenticator's thread: ``key`` is the client's public key, z85-encoded."""
        if key in self.allowed:
            return True
        self.refused_keys += 1
        now = time.monotonic()
        if now - self._logged.get(key, 0.0) >= 1.0:  # a refused peer tries again ten times a second
            self._logged[key] = now
            self.log.warning("curve_key_refused", key=key.decode(errors="replace"), refused=self.refused_keys,
                             hint=f"not among the public keys in {self.directory}")
        return False

    def reload_if_changed(self) -> None:
        try:
            signature = self._scan()
        except OSError:
            signature = ("unreadable",)
        if signature == self._signature:
            return
        try:
            allowed, signature = self._read(strict=False)
        except OSError as exc:
            self.log.error("authorized_keys_unreadable", directory=str(self.directory), error=exc.strerror)
            self._signature = signature
            return
        self.allowed, self._signature = allowed, signature  # one assignment: the thread sees old or new
        self.log.info("authorized_keys_reloaded", keys=len(allowed))

    def _scan(self) -> tuple:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in self.directory.glob("*.key")))

    def _read(self, *, strict: bool) -> tuple[frozenset[bytes], tuple]:
        if not self.directory.is_dir():
            if strict:
                raise _setup_error(f"CHATTER_CURVE_AUTHORIZED={self.directory} is not a directory of public keys")
            raise OSError(2, "not a directory")
        signature = self._scan()
        allowed = set()
        for path in sorted(self.directory.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except Exception:
                public = None
            if public is None:
                if strict:
                    raise _setup_error(f"CHATTER_CURVE_AUTHORIZED: {path} holds no public key in zmq.auth's format")
                self.log.error("authorized_key_unreadable", file=str(path))
                continue
            allowed.add(public)
        return frozenset(allowed), signature

    def stop(self) -> None:
        self.auth.stop()


def watch(sock: zmq.Socket) -> zmq.Socket:
    """A monitor of ``sock``'s refused handshakes: readable when one happened (see ``refusal``)."""
    return sock.get_monitor_socket(REFUSED_EVENTS)


def refusal(monitor: zmq.Socket) -> str | None:
    """The next refused handshake on ``monitor``, in words, or None when there is none waiting."""
    try:
        event = recv_monitor_message(monitor, zmq.NOBLOCK)
    except zmq.Again:
        return None
    kind = event["event"]
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return ("the coordinator refused this key (CHATTER_CURVE_SECRET): it is not among its authorized keys "
                "(CHATTER_CURVE_AUTHORIZED)")
    # a protocol error, or none named (a plain peer may just see the connection dropped)
    return ("the handshake failed: one side uses CURVE and the other does not, or the keys do not match "
            "(CHATTER_CURVE_SECRET, CHATTER_CURVE_SERVER)")
