"""The coordinator's per-delta path in process: its pure machine (``services/coordinator/machine.py``) fed
the generator's delta batches of 200 streaming generations, decoded as the shell decodes them, with the
effects encoded and ``tick`` after every batch; no sockets, no other process. CPU per delta, and the
deltas a second that makes (docs/PERFORMANCE.md, "The coordinator's per-delta path"):

    .venv/bin/python bench/coordinator_path.py [--deltas-each 300] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import messages as m  # noqa: E402
from services import shell  # noqa: E402
from services.coordinator.machine import Coordinator, ReplyTo, Settings, ToClients, ToPersister  # noqa: E402

GENERATIONS = 200
BATCH = 64  # deltas per GenDeltaBatch, as bench/run.py's section a sends them


def started_machine() -> tuple[Coordinator, list[str]]:
    ids = (f"{i:032x}" for i in itertools.count())
    machine = Coordinator(Settings(adopt_grace_ms=0), lambda text, model: len(text.split()),
                          new_id=lambda: next(ids), new_ordered_id=lambda: next(ids))
    gen_ids = []
    for i in range(GENERATIONS):
        (created,) = [e for e in machine.handle_rpc(b"c", m.NewSession(1), 100.0) if type(e) is ReplyTo]
        sent = [e for e in machine.handle_rpc(b"c", m.Send(2, created.msg.result.session_id, f"bench {i}", f"r{i}"),
                                              100.0) if type(e) is ReplyTo][0].msg.result
        machine.handle_event(m.GenStarted(sent.generation_id, "bench"), 100.0)
        gen_ids.append(sent.generation_id)
    return machine, gen_ids


def frames(gen_ids: list[str], deltas_each: int) -> list[bytes]:
    out, pending = [], []
    for seq in range(1, deltas_each + 1):
        for gen_id in gen_ids:
            pending.append([gen_id, seq, "tok ", 1, time.time()])
            if len(pending) == BATCH:
                out.append(m.GenDeltaBatch(pending).encode())
                pending = []
    if pending:
        out.append(m.GenDeltaBatch(pending).encode())
    return out


def feed(machine: Coordinator, batches: list[bytes]) -> None:
    now = 100.0
    for frame in batches:
        now += 0.0001
        msgs, errors = shell.decode_bundle(frame, m.GEN_EVENTS)
        assert not errors
        effects = []
        for msg in msgs:
            effects.extend(machine.handle_event(msg, now))
        effects.extend(machine.tick(now))
        for effect in effects:
            if type(effect) is ToClients or type(effect) is ToPersister:
                effect.msg.encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas-each", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions instead of the figure")
    args = parser.parse_args()
    machine, gen_ids = started_machine()
    batches = frames(gen_ids, args.deltas_each)
    total = GENERATIONS * args.deltas_each
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(feed, machine, batches)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        return
    cpu = time.process_time()
    feed(machine, batches)
    cpu = time.process_time() - cpu
    assert all(len(machine.active[g].text()) == 4 * args.deltas_each for g in gen_ids), "a delta was not taken"
    print(f"{cpu * 1e6 / total:.2f} µs CPU per delta, {total / cpu:,.0f} deltas/s ({total:,} deltas)")


if __name__ == "__main__":
    main()
