"""The native thread's latency-first turn: a lone packet after an idle spell leaves at once.

Once the thread has drained both descriptors, the first packet of its next wake-up is written to
the TUN (or sent) before the read that would find its descriptor empty, and the rest of a burst
is drained in the turns after (meshvpn/_fastpath_loop.c).  Real parts, as tests/unit/test_native_loop.py:
a loopback UDP socket into the thread and an AF_UNIX datagram socket as the TUN.  The first
burst after start() is taken whole (test_native_loop's equality tests queue theirs before it).
"""

import time

import pytest

from meshvpn.replay import ReplayWindow
from tests.unit.test_fastpath import ACCEPT4, NATIVE_MODULE, SRC4, sessions
from tests.unit.test_native_loop import (FAR, PEER_KEY, install_sender, peer_socket, python_path,  # noqa: F401 (fixtures)
                                         received_datagrams, rig, sealed, tcp_segments, tun_read, udp4)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
SETTLE = 0.02
"""Seconds for the thread to go back to poll() after what it was given was counted."""


def test_after_an_idle_spell_the_first_datagram_is_written_alone_and_the_rest_still_delivered(rig):
    sender, receiver = sessions()
    window = NATIVE_MODULE.NativeWindow(ReplayWindow())
    rig.loop.replace([(2, receiver.recv_key, window, SRC4, PEER_KEY, FAR)], [], ACCEPT4, b"", [])
    messages = sealed(sender, tcp_segments(9))
    rig.loop.start()
    rig.send(messages[:1])
    rig.wait_receives(1)
    time.sleep(SETTLE)
    first_writes = rig.tun_writes()
    rig.send(messages[1:])
    rig.wait_receives(9)
    writes = rig.tun_writes()
    expected_first, _, _ = python_path(messages[:1], ReplayWindow())
    lone, _, _ = python_path(messages[1:2], ReplayWindow())
    together, _, _ = python_path(messages[1:], ReplayWindow())
    assert first_writes == expected_first
    assert writes[0] == lone[0], "segment 2 waited for the segments after it"
    assert len(together) == 1 and len(writes) >= 2, "the 8 segments coalesce into one write in Python"
    assert sum(row[1] for row in rig.rows) == 9 and rig.totals[1] == 9


def test_after_an_idle_spell_the_first_read_is_sent_alone_and_the_rest_still_sealed_in_order(rig, peer_socket):
    sender, _ = sessions()
    reference, _ = sessions()
    install_sender(rig, sender, peer_socket)
    reads = [tun_read(udp4(200, i)) for i in range(9)]
    expected = [bytes(out[: reference.seal_into(out, 0, r, 10, len(r))]) for r in reads for out in [bytearray(4096)]]
    rig.loop.start()
    rig.tun_peer.send(reads[0])
    assert received_datagrams(peer_socket, 1) == expected[:1]
    time.sleep(SETTLE)
    _, _, totals = rig.loop.counts()
    assert totals[8] == 1
    for read in reads[1:]:
        rig.tun_peer.send(read)
    assert received_datagrams(peer_socket, 8) == expected[1:]
    _, _, totals = rig.loop.counts()
    assert totals[6] == 8 and totals[7] == 8
    assert totals[8] >= 2, "the lone first read went out in the run of the reads behind it"
