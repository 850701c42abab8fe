"""Receiver-side cost per packet, in process: one GRO receive of sealed datagrams through ``open_datagrams``.

Why: the inner checks after decryption (source, destination) sit on the per-packet path; this
measures that path alone, without I/O, for the pure-Python and the native loops, so a change to
the checks can be compared before and after (``docs/dataplane.md``, "Per packet, in process"):

    .venv/bin/python -m meshvpn.bench.receive [--segments 45] [--size 1380] [--rounds 200] [--repeat 5]

Prints the best of ``--repeat`` runs of ``--rounds`` receives, in µs per packet.
"""

from __future__ import annotations

import argparse
import struct
import time

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.node.core import NodeCore
from meshvpn.node.datapath import fastpath
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.node.pathfinder import Path as PathTo, PathKind
from meshvpn.node.peers import Route
from meshvpn.noise import SessionKeys
from meshvpn.session import OVERHEAD, Session

OWN, PEER = "100.64.0.1", "100.64.0.2"
PEER_KEY = bytes([2]) * 32
SENDER = wire.Endpoint("192.0.2.2", 41641)


def receiver() -> tuple[DataPlane, Session]:
    """A data path registered as OWN whose one peer (PEER) has a session; and the peer's sealing session."""
    core = NodeCore(bytes([7]) * 32, lambda n: bytes(n))
    network = m.NetworkInfo(name="bench", cidr="100.64.0.0/24")
    core.coord_message(m.Registered(node_key=core.public_key, name="me", address=OWN, network=network), 0.0)
    core.coord_message(m.PeerMap(peers=(m.PeerInfo(key=PEER_KEY, name="peer", address=PEER, online=True),)), 0.0)
    peer = core.peers.find("peer")
    peer.ring.current = Session(SessionKeys(b"r" * 32, b"s" * 32, 22, 11, PEER_KEY, False), 0.0)
    core.peers.set_route(peer, Route(PathTo(PathKind.DIRECT, SENDER), SENDER))
    core.peers.index(22, peer)
    sender = Session(SessionKeys(b"s" * 32, b"r" * 32, 11, 22, core.public_key, True), 0.0)
    return DataPlane(core), sender


def ip_packet(size: int, n: int) -> bytes:
    raw = lambda text: bytes(int(part) for part in text.split("."))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, n & 0xFFFF, 0, 64, 6, 0, raw(PEER), raw(OWN)) + bytes(size - 20)


def measure(segments: int, size: int, rounds: int) -> float:
    """µs per packet to open ``rounds`` receives of ``segments`` datagrams each."""
    plane, sender = receiver()
    seg = size + OVERHEAD
    runs = []
    for r in range(rounds):
        out = bytearray(seg * segments)
        for i in range(segments):
            packet = ip_packet(size, r * segments + i)
            sender.seal_into(out, i * seg, packet, 0, len(packet))
        runs.append(out)
    start = time.perf_counter()
    for buf in runs:
        to_tun: list = []
        plane.open_datagrams(buf, len(buf), seg, SENDER, 1.0, to_tun)
    elapsed = time.perf_counter() - start
    assert plane.core.peers.find("peer").counters.rx_packets == rounds * segments, "every packet must open"
    return elapsed / (rounds * segments) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=45)
    parser.add_argument("--size", type=int, default=1380)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    native = fastpath._native
    for name, impl in (("pure Python", None), ("native", native)):
        if name == "native" and native is None:
            print("native: not built")
            continue
        fastpath._native = impl
        best = min(measure(args.segments, args.size, args.rounds) for _ in range(args.repeat))
        print(f"{name}: {best:.3f} µs per packet (open + checks, {args.segments} per receive, {args.size} bytes)")
    fastpath._native = native


if __name__ == "__main__":
    main()
