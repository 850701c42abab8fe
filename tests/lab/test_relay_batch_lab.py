"""The relay's batch path end to end: GRO receives and GSO runs out, with checksummed transfers.

Same topology as `test_relay_lab`: a coord, a relay at 203.0.113.20 and two sites behind NATs
that defeat hole punching, so every byte goes through the relay. The relay's metrics say how
many envelopes it forwarded and in how many UDP sends: fewer sends than envelopes is the batching.
"""

from __future__ import annotations

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


def batching(mesh: Mesh, moves) -> float:
    """Envelopes the relay forwarded per UDP send while `moves()` ran."""
    before = mesh.relay_metrics("relay")
    moves()
    after = mesh.relay_metrics("relay")
    forwarded = after["meshvpn_relay_forwarded_packets_total"] - before["meshvpn_relay_forwarded_packets_total"]
    sends = after["meshvpn_relay_runs_total"] - before["meshvpn_relay_runs_total"]
    assert forwarded > 1000 and sends > 0, f"{forwarded} forwarded in {sends} sends"
    return forwarded / sends


def test_a_bulk_transfer_over_udp_goes_through_the_relay_in_batches(run) -> None:
    mesh = run()
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    per_send = batching(mesh, lambda: copy(mesh, "a1", "b1", 32 << 20))
    assert per_send >= PER_SEND, f"{per_send:.1f} envelopes per send"
    assert mesh.peer("a1", "b1")["path"] == "relay"
    if mesh.status("a1")["self"]["data_path"] == "native":  # the native threads sealed and opened the envelopes
        wait_for(lambda: mesh.status("a1")["self"]["native_loop"]["sealed natively"] > 10000, 5, "native seals")
        wait_for(lambda: mesh.status("b1")["self"]["native_loop"]["opened natively"] > 10000, 5, "native receives")


def test_a_tcp_relayed_node_sends_and_receives_in_batches(run) -> None:
    mesh = run(nat_a=NatKind.UDP_BLOCKED)
    assert mesh.status("a1")["self"]["relays"][0]["transport"] == "tcp"
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    per_send = batching(mesh, lambda: copy(mesh, "a1", "b1", 16 << 20))
    assert per_send >= PER_SEND, f"{per_send:.1f} envelopes per send: the frames of one TCP read leave in runs"
    copy(mesh, "b1", "a1", 16 << 20)
