"""Micro-benchmark of the per-packet crypto path and the handshake.

Run: ``.venv/bin/python -m meshvpn.bench.crypto [--seconds 1.0]``.  Prints
microseconds per DATA seal/open of a 1400-byte payload, per replay-window
update, and complete handshakes (both sides) per second.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

from meshvpn.noise import Initiator, StaticIdentity, consume_initiation
from meshvpn.replay import ReplayWindow
from meshvpn.session import Session

PAYLOAD_SIZE = 1400


def per_call_us(func: Callable[[], object], seconds: float) -> float:
    """Mean microseconds per call, running batches until ``seconds`` have passed."""
    calls, batch = 0, 100
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            func()
        calls += batch
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    seconds = parser.parse_args().seconds

    alice = StaticIdentity.from_private(os.urandom(32))
    bob = StaticIdentity.from_private(os.urandom(32))

    def handshake():
        initiator = Initiator(alice, bob.public, 1, os.urandom(32), time.time())
        pending = consume_initiation(bob, initiator.initiation)
        response, responder_keys = pending.respond(2, os.urandom(32))
        return initiator.consume_response(response), responder_keys

    initiator_keys, responder_keys = handshake()
    sender = Session(initiator_keys, 0.0)
    receiver = Session(responder_keys, 0.0)
    payload = os.urandom(PAYLOAD_SIZE)
    sealed = [sender.seal(payload) for _ in range(200_000)]
    opened = iter(sealed)
    window = ReplayWindow()
    counters = iter(range(10**9))

    seal_us = per_call_us(lambda: sender.seal(payload), seconds)
    open_us = per_call_us(lambda: receiver.open(next(opened)), min(seconds, 0.5))
    replay_us = per_call_us(lambda: window.check_and_update(next(counters)), seconds)
    handshake_us = per_call_us(handshake, seconds)

    print(f"seal {PAYLOAD_SIZE} B:        {seal_us:8.2f} us  ({PAYLOAD_SIZE * 8 / seal_us:7.1f} Mbit/s)")
    print(f"open {PAYLOAD_SIZE} B:        {open_us:8.2f} us  ({PAYLOAD_SIZE * 8 / open_us:7.1f} Mbit/s)")
    print(f"replay window update: {replay_us:8.3f} us")
    print(f"handshake (both ends): {1e6 / handshake_us:7.0f} /s  ({handshake_us:.0f} us each)")


if __name__ == "__main__":
    main()
