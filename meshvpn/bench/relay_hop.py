"""What one relay adds to a round trip: UDP ping-pong through a `meshvpn relay` process on loopback.

Run: ``.venv/bin/python -m meshvpn.bench.relay_hop [--pings 3000] [--rounds 2]``.

Two UDP sockets register with a relay process (hello, cookie, hello again, as a node does) and
bounce one 150-byte envelope back and forth through it, with blocking sockets at both ends; the
same sockets then bounce the bare message directly. Rounds alternate between the relay's native
thread and its pure-Python path (``MESHVPN_PURE_PYTHON=1`` for the relay process only), so both
meet the same machine load. Prints the median and 90th percentile round trip of each. Medians
of thousands of round trips hold up on a shared machine better than the bench's ping averages
do. Not a test: nothing is asserted. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshvpn import keys, wire
from meshvpn.bench.relay_hellos import hello
from meshvpn.cookie import CookieJar
from meshvpn.relaytoken import TokenMinter
from meshvpn.wire import MessageType

INNER = wire.header(MessageType.DATA) + bytes(12) + bytes(98)
"""A DATA message as the relay sees it: opaque."""
NONCE = bytes(24)
START_WAIT = 15.0
"""Seconds a relay process may take to answer its first hello."""


def start_relay(workdir: Path, relay_key: Path, coord_public: bytes, pure: bool) -> tuple[subprocess.Popen, tuple]:
    """A relay process on a free loopback port, forwarding natively or (``pure``) in Python."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = workdir / f"relay-{port}.yaml"
    config.write_text(f"private_key_file: {relay_key}\nstate_dir: {workdir / 'state'}\nlisten: 127.0.0.1:{port}\n"
                      f"coord:\n  public_key: {keys.encode_key(coord_public)}\n")
    env = dict(os.environ, MESHVPN_PURE_PYTHON="1" if pure else "0")
    log = open(workdir / f"relay-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "meshvpn", "relay", "-c", str(config)], env=env, stderr=log)
    return proc, ("127.0.0.1", port)


def register(relay: tuple, relay_public: bytes, minter: TokenMinter) -> tuple[socket.socket, bytes]:
    """A socket registered with the relay as a new node (hello, the cookie, the stamped hello, the ack), and its key."""
    private = os.urandom(32)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    deadline = time.monotonic() + START_WAIT
    while True:
        now = time.time()
        token = minter.mint(relay_public, keys.public_key(private), now)[0]
        sock.sendto(hello(private, relay_public, token, now, NONCE), relay)
        try:
            reply = sock.recv(2048)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    if reply[1] == MessageType.RELAY_COOKIE:
        jar = CookieJar(relay_public)
        jar.consume(reply, {NONCE}, now)
        sock.sendto(jar.stamp(hello(private, relay_public, token, now + 0.001, NONCE), now), relay)
        reply = sock.recv(2048)
    assert reply[1] == MessageType.RELAY_HELLO_ACK, f"the relay answered type {reply[1]}"
    return sock, keys.public_key(private)


def ping_pong(a: socket.socket, b: socket.socket, to_b: tuple, to_a: tuple, ab: bytes, ba: bytes, pings: int):
    """Median and 90th percentile round trip in µs: a sends `ab` to `to_b`, b answers `ba` to `to_a`."""
    times = []
    for _ in range(pings):
        start = time.perf_counter()
        a.sendto(ab, to_b)
        b.recv(2048)
        b.sendto(ba, to_a)
        a.recv(2048)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6, statistics.quantiles(times, n=10)[8] * 1e6


def one_round(workdir: Path, pure: bool, pings: int) -> tuple:
    coord, relay_private = os.urandom(32), os.urandom(32)
    relay_key = workdir / f"relay-{keys.public_key(relay_private)[:4].hex()}.key"
    keys.write_private_key(relay_key, relay_private)
    relay_public, minter = keys.public_key(relay_private), TokenMinter(coord, os.urandom)
    proc, relay = start_relay(workdir, relay_key, keys.public_key(coord), pure)
    try:
        (a, a_key), (b, b_key) = register(relay, relay_public, minter), register(relay, relay_public, minter)
        ab, ba = wire.encode_relay(b_key, INNER), wire.encode_relay(a_key, INNER)
        ping_pong(a, b, relay, relay, ab, ba, pings // 10)  # warm up
        relayed = ping_pong(a, b, relay, relay, ab, ba, pings)
        direct = ping_pong(a, b, b.getsockname(), a.getsockname(), INNER, INNER, pings)
        a.close()
        b.close()
        return relayed, direct
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="meshvpn-relay-hop-") as tmp:
        for _ in range(args.rounds):
            for pure in (False, True):
                (relayed, relayed90), (direct, direct90) = one_round(Path(tmp), pure, args.pings)
                name = "python" if pure else "native"
                print(f"{name:7s} relayed {relayed:6.1f} µs (p90 {relayed90:6.1f}), direct {direct:6.1f} µs "
                      f"(p90 {direct90:6.1f}): the relay adds {relayed - direct:6.1f} µs a round trip")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
