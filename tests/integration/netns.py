"""Two hosts for a test: network namespaces of the test's own, joined by a veth pair on private addresses
(A 10.77.0.1, B 10.77.0.2, /24). Nothing else is reachable from them, and they leave nothing behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

A_ADDRESS, B_ADDRESS = "10.77.0.1", "10.77.0.2"


class Unavailable(Exception):
    """Network namespaces cannot be made here; the sentence says why."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, timeout=30)
    if done.returncode != 0:
        raise Unavailable(f"ip {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")


class TwoHosts:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise Unavailable("no ip command (iproute2)")
        tag = uuid.uuid4().hex[:8]
        self.a, self.b = f"chatter-a-{tag}", f"chatter-b-{tag}"
        self.veth_a, self.veth_b = f"cva{tag}", f"cvb{tag}"  # an interface name has at most 15 characters
        self.made: list[str] = []

    def __enter__(self) -> TwoHosts:
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                self.made.append(ns)
            _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
            _ip("link", "set", self.veth_a, "netns", self.a)
            _ip("link", "set", self.veth_b, "netns", self.b)
            for ns, dev, address in ((self.a, self.veth_a, A_ADDRESS), (self.b, self.veth_b, B_ADDRESS)):
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in self.made:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()

    @staticmethod
    def on(ns: str) -> tuple[str, ...]:
        """The command-line prefix that runs a process on that host."""
        return ("ip", "netns", "exec", ns)

    def link(self, up: bool) -> None:
        """Pull host B's cable, or plug it back in."""
        _ip("-n", self.b, "link", "set", self.veth_b, "up" if up else "down")
