"""What the native thread's per-packet lookups cost as the peers grow: receiver index → session, overlay → sender.

Run: ``.venv/bin/python -m meshvpn.bench.lookups [--peers 10 10000] [--packets 4000] [--rounds 5]``
(no root needed; as root the socket buffers are forced large enough for a round).

A ``meshvpn._fastpath.Loop`` gets a table of N peers (an entry and a sender each, the entries'
receiver indexes spread over 32 bits), on loopback sockets: the UDP socket it receives on, and
a UDP socket in place of the TUN (its reads are what a test socket sent it, its writes go back
there and are not read). Each round queues `--packets` datagrams before the thread starts, one
after the other to 64 peers spread through the table (so no lookup is the one before):

* ``open``: sealed transport messages of 64-byte packets, each for its peer's entry;
* ``seal``: TUN reads of 64-byte packets, each to its peer's overlay address.

It prints the fastest round's CPU microseconds per packet (the process's: the thread's, and the
main thread's that waits for the counts every 2 ms), thread start to the last one counted: open
or seal, the lookup, the TUN write or UDP send. CPU time rather than wall time, so that a loaded
machine's waits for a CPU do not count. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time

from meshvpn.node.datapath import fastpath
from meshvpn.noise import SessionKeys
from meshvpn.replay import ReplayWindow
from meshvpn.session import Session

KEY = bytes(range(32))
PEER_KEY = b"P" * 32
OWN = bytes([100, 64, 0, 1])
FLOWS = 64
"""Peers the packets of a round go to, in turn."""
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
"""Linux's socket options (``socket`` names neither)."""
VNET = bytes(10)
"""A TUN read's virtio header: no offload."""


def overlay(i: int) -> bytes:
    return bytes([100, 64 + (i >> 16 & 63), i >> 8 & 255, i & 255])


def index_of(i: int) -> int:
    return (i * 2654435761 + 12345) & 0xFFFFFFFF


def packet(src: bytes, dst: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 64, 0, 0, 64, 17, 0, src, dst) + bytes(44)


def udp_socket(buffer: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, buffer)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, buffer)
    return sock


class Rig:
    """A Loop with `count` peers installed, its sockets, and what a round sends it."""

    def __init__(self, count: int, packets: int) -> None:
        native = fastpath.native_module()
        self.udp, self.tun, self.test = udp_socket(64 << 20), udp_socket(64 << 20), udp_socket(64 << 20)
        self.tun.connect(self.test.getsockname())
        self.loop = native.Loop(self.udp.fileno(), self.tun.fileno())
        sink = self.test.getsockname()
        entries = [(index_of(i), KEY, native.NativeWindow(ReplayWindow()), overlay(i), PEER_KEY, 1e12)
                   for i in range(count)]
        senders = [(overlay(i), index_of(i), KEY, native.NativeCounter(0), (socket.inet_aton(sink[0]), sink[1]), b"", 1e12)
                   for i in range(count)]
        self.loop.replace(entries, senders, OWN, b"", [])
        chosen = [count * k // FLOWS for k in range(FLOWS)]
        sessions = {i: Session(SessionKeys(KEY, KEY, 1, index_of(i), PEER_KEY, True), 0.0) for i in chosen}
        out = bytearray(256)
        self.messages = []
        for n in range(packets):
            i = chosen[n % FLOWS]
            inner = packet(overlay(i), OWN)
            self.messages.append(bytes(out[: sessions[i].seal_into(out, 0, inner, 0, len(inner))]))
        self.reads = [VNET + packet(OWN, overlay(chosen[n % FLOWS])) for n in range(packets)]

    def close(self) -> None:
        self.loop.stop()
        for sock in (self.udp, self.tun, self.test):
            sock.close()

    def run(self, side: str, seconds: float = 20.0) -> float:
        """Queue the round's datagrams, start the thread, wait for the last one counted: seconds per packet."""
        if side == "open":
            for message in self.messages:
                self.test.sendto(message, self.udp.getsockname())
            wanted, total = len(self.messages), 1  # datagrams opened here
        else:
            for read in self.reads:
                self.test.sendto(read, self.tun.getsockname())
            wanted, total = len(self.reads), 7  # packets sealed here
        counted = 0
        started, deadline = time.process_time(), time.monotonic() + seconds
        self.loop.start()
        while counted < wanted and time.monotonic() < deadline:
            time.sleep(0.002)
            counted += self.loop.counts()[2][total]
        spent = time.process_time() - started
        if counted < wanted:
            raise RuntimeError(f"{side}: {counted} of {wanted} packets counted in {seconds} s")
        return spent / wanted


def measure(count: int, packets: int, rounds: int) -> dict[str, float]:
    """The fastest round's microseconds per packet, each side, with `count` peers installed."""
    best = {}
    for side in ("open", "seal"):
        times = []
        for _ in range(rounds):
            rig = Rig(count, packets)
            try:
                times.append(rig.run(side))
            finally:
                rig.close()
        best[side] = min(times) * 1e6
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.lookups", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--packets", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if fastpath.native_module() is None:
        raise SystemExit("meshvpn._fastpath was not built (make setup builds it)")
    print(f"load average {os.getloadavg()[0]:.1f}; fastest of {args.rounds} rounds of {args.packets} packets, "
          f"CPU µs per packet")
    print(f"{'peers':>6} {'open':>8} {'seal':>8}")
    for count in args.peers:
        row = measure(count, args.packets, args.rounds)
        print(f"{count:>6} {row['open']:>8.2f} {row['seal']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
