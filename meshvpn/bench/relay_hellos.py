"""What one relay hello costs the relay core when it is junk: the flood a relay sees from anyone.

Run: ``.venv/bin/python -m meshvpn.bench.relay_hellos [--hellos 3000]``.

Two cases, each a run of hellos through `RelayCore.receive` from a new source address each time:
a forged token with a new node key every time (an attacker who has no token), and one captured
token with a garbled box (an attacker who saw a node's hello on the wire). Prints the mean cost
per hello and what that makes per core. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import time

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.relay.core import RelayCore
from meshvpn.relaytoken import TokenMinter
from meshvpn.wire import MessageType


def hello(private: bytes, relay_public: bytes, token: bytes, now: float, nonce: bytes | None = None) -> bytes:
    box = wire.box_key(private, relay_public)
    return wire.seal(MessageType.RELAY_HELLO, keys.public_key(private), nonce or os.urandom(24), box,
                     wire.RelayHello(int(now * 1000), token))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hellos", type=int, default=3000)
    args = parser.parse_args()
    now = time.time()
    coord, relay, node = os.urandom(32), os.urandom(32), os.urandom(32)
    relay_public = keys.public_key(relay)
    core = RelayCore(relay, keys.public_key(coord), RelayLimits(), os.urandom, now)
    token = TokenMinter(coord, os.urandom).mint(relay_public, keys.public_key(node), now)[0]
    garbled = bytearray(hello(node, relay_public, token, now))
    garbled[-20] ^= 1
    cases = {
        "forged token, new key each": [hello(os.urandom(32), relay_public, os.urandom(80), now)
                                       for _ in range(args.hellos)],
        "captured token, garbled box": [bytes(garbled)] * args.hellos,
    }
    for name, hellos in cases.items():
        start = time.perf_counter()
        for n, message in enumerate(hellos):
            core.receive(message, (f"192.0.2.{n % 250 + 1}", 1024 + n), now)
        each = (time.perf_counter() - start) / len(hellos)
        print(f"{name:30s} {each * 1e6:6.1f} µs a hello, {1 / each:9,.0f} a second per core; dropped as {dict(core.drops)}")
        core.drops.clear()


if __name__ == "__main__":
    main()
