"""The relay's batch path end to end: GRO receives and GSO runs out, with checksummed transfers.

Same topology as `test_relay_lab`: a coord, a relay at 203.0.113.20 and two sites behind NATs
that defeat hole punching, so every byte goes through the relay. The relay's metrics say how
many envelopes it forwarded and in how many UDP sends: fewer sends than envelopes is the batching.
Where the relay forwards in its native thread (the extension is built and not turned off), they
also say what the thread forwarded and what it left to Python: envelopes between two UDP nodes
go natively, those to a node on a TCP stream through Python, and both arrive intact.
"""

from __future__ import annotations

import time

import pytest

from meshvpn.lab import NatKind
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer
from test_relay_lab import run  # noqa: F401  (the fixture that builds the relayed mesh)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

PER_SEND = 8.0
"""Envelopes per run the relay must reach on a bulk transfer (one per run is no batching)."""


def copy(mesh: Mesh, src: str, dst: str, size: int) -> None:
    sent, received = transfer(mesh.nodes[src].ns, mesh.nodes[dst].ns, mesh.overlay(dst), size=size)
    assert received.same_data(sent) and sent.bytes == size, f"sent {sent}, received {received}"


NATIVE = 'meshvpn_relay_native_total{count="%s"}'
"""A count of the relay's native thread, as its metrics name it (absent on the pure-Python path)."""


def batching(mesh: Mesh, moves) -> tuple[float, dict[str, float]]:
    """Envelopes the relay forwarded per UDP send while `moves()` ran, and what its native thread
    forwarded and handed to Python meanwhile (empty when it forwards in Python)."""
    before = mesh.relay_metrics("relay")
    moves()
    time.sleep(1.5)  # the relay folds its thread's counts every second
    after = mesh.relay_metrics("relay")
    forwarded = after["meshvpn_relay_forwarded_packets_total"] - before["meshvpn_relay_forwarded_packets_total"]
    sends = after["meshvpn_relay_runs_total"] - before["meshvpn_relay_runs_total"]
    assert forwarded > 1000 and sends > 0, f"{forwarded} forwarded in {sends} sends"
    native = {count: after[NATIVE % count] - before.get(NATIVE % count, 0.0)
              for count in ("forwarded natively", "handed to python") if NATIVE % count in after}
    return forwarded / sends, native


def test_a_bulk_transfer_over_udp_goes_through_the_relay_in_batches(run) -> None:
    mesh = run()
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    per_send, native = batching(mesh, lambda: copy(mesh, "a1", "b1", 32 << 20))
    assert per_send >= PER_SEND, f"{per_send:.1f} envelopes per send"
    assert mesh.peer("a1", "b1")["path"] == "relay"
    if native:  # the relay's thread forwarded the bulk: 32 MiB is over 20,000 envelopes
        assert native["forwarded natively"] > 20000 and native["handed to python"] < 100, native
    if mesh.status("a1")["self"]["data_path"] == "native":  # the native threads sealed and opened the envelopes
        wait_for(lambda: mesh.status("a1")["self"]["native_loop"]["sealed natively"] > 10000, 5, "native seals")
        wait_for(lambda: mesh.status("b1")["self"]["native_loop"]["opened natively"] > 10000, 5, "native receives")


def test_a_tcp_relayed_node_sends_and_receives_in_batches(run) -> None:
    mesh = run(nat_a=NatKind.UDP_BLOCKED, tcp_between_sites=False)  # no direct TCP path either
    assert mesh.status("a1")["self"]["relays"][0]["transport"] == "tcp"
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    per_send, _ = batching(mesh, lambda: copy(mesh, "a1", "b1", 16 << 20))
    assert per_send >= PER_SEND, f"{per_send:.1f} envelopes per send: the frames of one TCP read leave in runs"
    _, native = batching(mesh, lambda: copy(mesh, "b1", "a1", 16 << 20))
    if native:  # b1's envelopes come over UDP to a node on a stream: the thread hands its receives to Python
        assert native["forwarded natively"] == 0 and native["handed to python"] > 100, native

