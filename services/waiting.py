"""Whether any of a process's replies still waits for its first token: asked before every paced sleep
(``pacing.Pacer``'s ``hurry``), by the coordinator's machine and by the generator. Pure: no clock, no I/O."""
from __future__ import annotations

from typing import Callable


class FirstTokenWait:
    """The replies that may still wait for their first token: each is added when it is sent off, leaves when it
    ends, and is dropped when a question finds it has a token, so a question costs O(1) amortized however
    many replies stream, and the set never holds more than the live replies."""

    __slots__ = ("candidates", "still_waiting")

    def __init__(self, still_waiting: Callable[[str], bool]) -> None:
        self.candidates: set[str] = set()
        self.still_waiting = still_waiting  # generation id -> no token yet, and still live

    def add(self, generation_id: str) -> None:
        self.candidates.add(generation_id)

    def ended(self, generation_id: str) -> None:
        self.candidates.discard(generation_id)

    def __call__(self) -> bool:
        candidates = self.candidates
        while candidates:
            generation_id = candidates.pop()
            if self.still_waiting(generation_id):
                candidates.add(generation_id)
                return True
        return False
