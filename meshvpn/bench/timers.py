"""What a node's bookkeeping costs per input as its peer count grows: timers and the input step.

Run: ``.venv/bin/python -m meshvpn.bench.timers [--peers 10 100 1000] [--calls 200]``.

One real :class:`~meshvpn.node.node.Node` (through the sim harness's ``MemoryNode``) registers
and gets a peer map of N online peers whose public endpoints are in 203.0.113.0/24, where nothing
answers; 30 simulated seconds of its own timers bring it to the steady state a daemon with that
many silent peers is in (probing, no paths). Then, each timed `--calls` times:

* ``get_timer``: what the daemon asks after every input;
* ``handle_timer``: one call at the node's own next deadline, outputs drained;
* ``input step``: one datagram the node drops (a malformed handshake from a stranger), its
  outputs drained and ``get_timer`` asked, as the daemon does after every datagram batch;
* ``peer update``: one coord ``peer_update`` (a new public endpoint for one peer, peer by peer
  in turn) through the node, outputs drained;
* ``native sync``: with the native extension built, what the daemon then asks of the native
  thread's Python face (`NativeReceiver.sync`), every peer holding a current session, the
  thread's ``Loop`` on a loopback socket (not started);
* ``sync, one changed``: the same after one peer's rows changed (a previous session came or
  went, peer by peer in turn), which the thread's table must take;
* ``peer leaves``: one peer removed by the coord and added back, peer by peer in turn, through
  the node's core (the node's names announcement is not in it), every peer holding a session, so
  the table holds an index per peer;
* ``with names``: the same through the whole node, its names announcement (``PeerMapChanged``,
  the DNS responder's source) included, outputs drained;
* ``settle, routed``: one settle of the node's machines that finds nothing new (what ends every
  input and every look), every peer holding a direct route.

Prints the mean microseconds per call. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import socket
import time
from typing import Callable

from meshvpn.control import messages as m
from meshvpn.node.datapath import fastpath
from meshvpn.node.datapath.dataplane import SendBuffer
from meshvpn.node.datapath.native_loop import NativeReceiver
from meshvpn.node.pathtypes import Path, PathKind
from meshvpn.noise import SessionKeys
from meshvpn.session import Session
from meshvpn.sim.nodes import MemoryNode, seeded
from meshvpn.wire import Endpoint, MessageType

WARMUP = 30.0
"""Simulated seconds of timers before measuring."""
STRANGER = Endpoint("198.51.100.77", 40000)


def build(count: int, warmup: float = WARMUP) -> tuple[MemoryNode, float]:
    """A node with `count` silent peers, run to steady state (`warmup` simulated seconds); returns it and its clock."""
    rng = random.Random
    node = seeded(rng, 1, "me", "100.64.0.1", Endpoint("192.0.2.1", 41641))
    peers = tuple(m.PeerInfo(key=rng(10_000 + i).randbytes(32), name=f"peer{i}",
                             address=f"100.64.{(i + 2) >> 8}.{(i + 2) & 255}", online=True,
                             public_endpoint=m.Endpoint(f"203.0.113.{1 + i % 250}", 20000 + i))
                  for i in range(count))
    network = m.NetworkInfo(name="home", cidr="100.64.0.0/16")
    node.from_coord(m.Registered(node_key=node.public, name="me", address="100.64.0.1", network=network), 0.0)
    for start in range(0, count, m.MAX_PEERS):
        part = peers[start:start + m.MAX_PEERS]
        last = start + m.MAX_PEERS >= count
        node.from_coord(m.PeerMap(peers=part, part=start // m.MAX_PEERS, last=last), 0.0)
    now = 0.0
    while now < warmup:
        deadline = node.node.get_timer()
        now = warmup if deadline is None else min(max(deadline, now), warmup)
        node.tick(now)
        node.collect()
    return node, now


def native_sync(node: MemoryNode, now: float) -> tuple[Callable[[int], object], Callable[[int], object]] | None:
    """``NativeReceiver.sync`` after an input that changed no peer, and after one that changed one
    peer's rows, every peer with a session; None without the extension."""
    if fastpath.native_module() is None:
        return None
    node.node.get_timer()  # takes the peers the calls before marked, as the daemon asks after every input
    peers = node.node.core.peers
    table = list(peers)
    for index, peer in enumerate(table, 1000):
        peer.ring.current = session(index, peer.key, now)
        peers.index(index, peer)
    previous = [session(index, peer.key, now) for index, peer in enumerate(table, 1000 + len(table))]
    udp, tun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    receiver = NativeReceiver(node.data, udp.fileno(), tun[0], SendBuffer(lambda *_: None), lambda: None)
    receiver.sync(now)

    def sync(_: int, sockets=(udp, *tun)) -> None:  # the sockets stay open as long as the step
        receiver.sync(now)

    def one_changed(i: int, sockets=(udp, *tun)) -> None:
        peer = table[i % len(table)]
        peer.ring.previous = None if peer.ring.previous is not None else previous[i % len(table)]
        peers.changed.add(peer)  # as the core's timer marks a peer its machines touched
        receiver.sync(now)
    return sync, one_changed


def session(index: int, key: bytes, now: float) -> Session:
    keys = SessionKeys(bytes([index & 255]) * 32, bytes([index >> 8 & 255]) * 32, index, index, key, True)
    return Session(keys, now)


def mean_us(calls: int, step: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(calls):
        step(i)
    return (time.perf_counter() - started) / calls * 1e6


def measure(count: int, calls: int) -> dict[str, float]:
    """Mean microseconds of each kind of call for a node with `count` peers."""
    node, now = build(count)
    core = node.node
    junk = bytes((MessageType.HANDSHAKE_INIT,)) + b"\x00" * 40
    clock = [now]

    def tick(_: int) -> None:
        deadline = core.get_timer()
        clock[0] = max(clock[0], deadline if deadline is not None else clock[0])
        node.tick(clock[0])
        node.collect()

    def step(_: int) -> None:
        core.receive_datagram(junk, STRANGER, clock[0])
        node.drain(clock[0])
        core.get_timer()

    infos = [peer.info for peer in core.peers]

    def update(i: int) -> None:
        info = infos[i % len(infos)]
        moved = m.Endpoint("203.0.113.251", 30000 + i % 30000)
        node.from_coord(m.PeerUpdate(dataclasses.replace(info, public_endpoint=moved)), clock[0])

    row = {"get_timer": mean_us(calls, lambda _: core.get_timer()),
           "handle_timer": mean_us(calls, tick),
           "input step": mean_us(calls, step),
           "peer update": mean_us(calls, update)}
    syncs = native_sync(node, clock[0])
    row["native sync"] = float("nan") if syncs is None else mean_us(calls, syncs[0])
    row["sync, one changed"] = float("nan") if syncs is None else mean_us(calls, syncs[1])
    row["peer leaves"] = mean_us(calls, leave_and_return(node, clock[0]))
    row["with names"] = mean_us(calls, leave_and_return(node, clock[0], named=True))
    row["settle, routed"] = mean_us(calls, settle_routed(node, clock[0]))
    return row


def settle_routed(node: MemoryNode, now: float) -> Callable[[int], object]:
    """One quiet settle of the node, every peer holding a direct route to its public endpoint."""
    core = node.node
    for peer in list(core.peers):
        endpoint = peer.info.public_endpoint
        route = core.core.routes.for_path(peer.key, Path(PathKind.DIRECT, Endpoint(endpoint.host, endpoint.port)))
        core.peers.set_route(peer, route)
    node.drain(now)
    return lambda _: core._settle(now)


def leave_and_return(node: MemoryNode, now: float, named: bool = False) -> Callable[[int], object]:
    """One peer removed by the coord and added back through the core (`named`: through the whole
    node, its names announcement included), every peer holding a session."""
    core, peers = node.node.core, node.node.core.peers
    receive = node.from_coord if named else core.coord_message
    for index, peer in enumerate(list(peers), 100_000):
        if peer.ring.current is None:
            peer.ring.current = session(index, peer.key, now)
            peers.index(index, peer)
    infos = [peer.info for peer in peers]

    def leave(i: int) -> None:
        info = infos[i % len(infos)]
        receive(m.PeerRemove(key=info.key), now)
        receive(m.PeerUpdate(info), now)
    return leave


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.timers", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}; mean microseconds per call, {args.calls} calls")
    columns = ("get_timer", "handle_timer", "input step", "peer update", "native sync", "sync, one changed",
               "peer leaves", "with names", "settle, routed")
    print(f"{'peers':>6} " + " ".join(f"{column:>{max(len(column), 10)}}" for column in columns))
    for count in args.peers:
        row = measure(count, args.calls)
        print(f"{count:>6} " + " ".join(f"{row[column]:>{max(len(column), 10)}.1f}" for column in columns), flush=True)


if __name__ == "__main__":
    main()
