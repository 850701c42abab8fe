"""A relayed receive of the native thread while it sends to the peer direct wakes Python at once.

The peer's traffic coming through a relay while our route to it is direct is an event of the data
path (``DataPlane.relay_received``'s ``relayed_on_direct``, tests in `test_relayed_on_direct`); the
thread's receives reach it only when Python folds the thread's counts.  So the thread wakes Python
after such a receive (``Loop.fileno()`` turns readable) instead of leaving it to its own wake-up
(COUNTS_EVERY, 1 s, after the last) or the core's next look; at most once per RELAY_WAKE_EVERY
(0.1 s) for a peer, never per packet, and not for a peer it sends to through a relay anyway.  The
eventfd's value counts the wake-ups.  Real parts: the Loop on loopback sockets; waits are bounded.
"""

import os
import select
import socket
import time

import pytest

from meshvpn.wire import relay_prefix
from tests.unit.test_fastpath import ACCEPT4, NATIVE_MODULE, SRC4, sessions
from tests.unit.test_native_loop import FAR, PEER_KEY, Rig, enveloped, sealed, udp4

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
RELAY_WAKE_EVERY = 0.1
"""_fastpath_loop.h's: seconds between two wake-ups for one peer's relayed receives."""
AT_ONCE = 0.5
"""Seconds a wake-up may take from the relayed datagram's send on a loaded machine (it is at once;
without it, the thread's own wake-up comes 1 s after its start, 0.8 s after the send here)."""


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()


def route(rig: Rig, relayed: bool):
    """The peer (SRC4) has a current session the thread opens, and a route on the main socket,
    direct or through a relay; the peer's session, which seals what it sends."""
    peer, ours = sessions()
    window = NATIVE_MODULE.NativeWindow(ours.window)
    endpoint = (socket.inet_aton("127.0.0.1"), 9)
    prefix = relay_prefix(PEER_KEY) if relayed else b""
    rig.loop.replace([(2, ours.recv_key, window, SRC4, PEER_KEY, FAR)],
                     [(SRC4, 1, bytes(32), NATIVE_MODULE.NativeCounter(0), endpoint, prefix, FAR, 0)], ACCEPT4, b"", [])
    return peer


def wakes(rig: Rig, seconds: float) -> int:
    """The wake-ups written to ``fileno()`` so far (reset), waiting up to `seconds` for a first."""
    if not select.select([rig.loop.fileno()], [], [], seconds)[0]:
        return 0
    return int.from_bytes(os.read(rig.loop.fileno(), 8), "little")


def trickle(rig: Rig, messages: list[bytes], every: float) -> float:
    """Send `messages` `every` seconds apart; the seconds it took."""
    began = time.monotonic()
    for n, message in enumerate(messages):
        time.sleep(max(0.0, began + n * every - time.monotonic()))
        rig.send([message])
    rig.wait_receives(len(messages))
    return time.monotonic() - began


def test_a_relayed_receive_while_the_route_is_direct_wakes_python_at_once(rig):
    peer = route(rig, relayed=False)
    messages = enveloped(sealed(peer, [udp4(100, 0)]), "right")
    rig.loop.start()
    time.sleep(0.2)
    sent = time.monotonic()
    rig.send(messages)
    assert wakes(rig, 5.0) == 1
    took = time.monotonic() - sent
    print(f"woken {took * 1000:.1f} ms after the send")
    assert took < AT_ONCE
    rows = rig.loop.counts()[0]
    assert [row[11] > 0.0 for row in rows] == [True], "what Python folds on the wake-up: the relayed receive"


def test_a_relayed_flow_on_a_direct_route_wakes_python_once_per_interval_not_per_packet(rig):
    peer = route(rig, relayed=False)
    messages = enveloped(sealed(peer, [udp4(100, n) for n in range(40)]), "right")
    rig.loop.start()
    took = trickle(rig, messages, 0.01)
    woken = wakes(rig, 0.0)
    print(f"{len(messages)} relayed datagrams over {took:.2f} s: {woken} wake-ups")
    assert 1 <= woken <= took / RELAY_WAKE_EVERY + 2  # and the thread's own, once a second


def test_a_relayed_flow_on_a_relayed_route_leaves_python_to_the_threads_own_wake_ups(rig):
    peer = route(rig, relayed=True)
    messages = enveloped(sealed(peer, [udp4(100, n) for n in range(30)]), "right")
    began = time.monotonic()
    rig.loop.start()
    trickle(rig, messages, 0.01)
    woken = wakes(rig, 0.0)
    took = time.monotonic() - began
    print(f"{len(messages)} relayed datagrams over {took:.2f} s: {woken} wake-ups")
    assert woken <= int(took), "only the thread's own, once a second"
