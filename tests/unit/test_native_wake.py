"""Receive events of the native thread wake Python at once: a relayed receive the route does not
expect, and a direct receive from a new source (a roam).

The peer's traffic coming through a relay while our route to it is direct is an event of the data
path (``DataPlane.relay_received``'s ``relayed_on_direct``, tests in `test_relayed_on_direct`), and
so is its traffic through another relay than ours (``relay_moved``) and its newest data from a new
source (``DataPlane.direct_received``'s ``roamed``, `test_native_roaming`); the thread's receives
reach Python only when it folds the thread's counts.  So the thread wakes Python after such a
receive (``Loop.fileno()`` turns readable) instead of leaving it to its own wake-up (COUNTS_EVERY,
1 s, after the last) or the core's next look; at most once per WAKE_EVERY (0.1 s) for a session,
never per packet, and not for what the route expects (traffic through the relay we send through,
direct traffic from the source it came from before).  The eventfd's value counts the wake-ups.
Real parts: the Loop on loopback sockets; waits are bounded.
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
WAKE_EVERY = 0.1
"""_fastpath_loop.h's: least seconds between two wake-ups for one session's receive events."""
AT_ONCE = 0.5
"""Seconds a wake-up may take from the relayed datagram's send on a loaded machine (it is at once;
without it, the thread's own wake-up comes 1 s after its start, 0.8 s after the send here)."""


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()


def route(rig: Rig, relayed: bool, through_sender: bool = True):
    """The peer (SRC4) has a current session the thread opens, and a route on the main socket,
    direct or through a relay (the rig's sending socket, else another); the peer's session, which
    seals what it sends."""
    peer, ours = sessions()
    window = NATIVE_MODULE.NativeWindow(ours.window)
    port = rig.tx.getsockname()[1] if relayed and through_sender else 9
    endpoint = (socket.inet_aton("127.0.0.1"), port)
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


def flow_wakes(rig: Rig, messages: list[bytes]) -> tuple[int, float]:
    """Start the thread and send `messages` 10 ms apart: the wake-ups, and the seconds from the start."""
    began = time.monotonic()
    rig.loop.start()
    trickle(rig, messages, 0.01)
    woken = wakes(rig, 0.0)
    took = time.monotonic() - began
    print(f"{len(messages)} datagrams over {took:.2f} s: {woken} wake-ups")
    return woken, took


def woken_at_once(rig: Rig, messages: list[bytes]) -> None:
    """Send `messages` 0.2 s after the thread's start: Python is woken once, at once."""
    rig.loop.start()
    time.sleep(0.2)
    sent = time.monotonic()
    rig.send(messages)
    assert wakes(rig, 5.0) == 1
    took = time.monotonic() - sent
    print(f"woken {took * 1000:.1f} ms after the send")
    assert took < AT_ONCE


def test_a_relayed_receive_while_the_route_is_direct_wakes_python_at_once(rig):
    peer = route(rig, relayed=False)
    messages = enveloped(sealed(peer, [udp4(100, 0)]), "right")
    woken_at_once(rig, messages)
    rows = rig.loop.counts()[0]
    assert [row[11] > 0.0 for row in rows] == [True], "what Python folds on the wake-up: the relayed receive"


def test_a_relayed_flow_on_a_direct_route_wakes_python_once_per_interval_not_per_packet(rig):
    peer = route(rig, relayed=False)
    messages = enveloped(sealed(peer, [udp4(100, n) for n in range(40)]), "right")
    rig.loop.start()
    took = trickle(rig, messages, 0.01)
    woken = wakes(rig, 0.0)
    print(f"{len(messages)} relayed datagrams over {took:.2f} s: {woken} wake-ups")
    assert 1 <= woken <= took / WAKE_EVERY + 2  # and the thread's own, once a second


def test_a_relayed_receive_through_another_relay_than_ours_wakes_python_at_once(rig):
    peer = route(rig, relayed=True, through_sender=False)
    messages = enveloped(sealed(peer, [udp4(100, 0)]), "right")
    woken_at_once(rig, messages)


def test_a_direct_receive_from_a_new_source_wakes_python_at_once(rig):
    peer = route(rig, relayed=False)
    messages = sealed(peer, [udp4(100, 0)])
    woken_at_once(rig, messages)
    rows = rig.loop.counts()[0]
    assert [row[8] for row in rows] == [("127.0.0.1", rig.tx.getsockname()[1])], "what Python folds: the new source"


def test_a_direct_flow_from_one_source_wakes_python_once_not_per_packet(rig):
    peer = route(rig, relayed=False)
    woken, took = flow_wakes(rig, sealed(peer, [udp4(100, n) for n in range(30)]))
    assert 1 <= woken <= 1 + int(took), "the new source once, and the thread's own, once a second"


def test_a_roam_within_the_interval_of_the_last_wake_up_still_wakes_python_after_it(rig):
    """A session's receive events share one wake-up clock: a roam just after another wake-up is kept,
    not lost (the flow's next packets come from the new source, which is no longer new), and wakes
    Python with the first of them after the interval."""
    peer = route(rig, relayed=False)
    first, *flow = sealed(peer, [udp4(100, n) for n in range(16)])
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        rig.loop.start()
        rig.send([first])
        assert wakes(rig, 5.0) == 1
        sent, woken = time.monotonic(), 0
        for n, message in enumerate(flow):  # from the new source, 20 ms apart, the first at once
            other.sendto(message, ("127.0.0.1", rig.rx.getsockname()[1]))
            woken = wakes(rig, max(0.0, sent + (n + 1) * 0.02 - time.monotonic()))
            if woken:
                break
        assert woken or wakes(rig, 5.0)
        took = time.monotonic() - sent
        print(f"the roam woke Python {took * 1000:.1f} ms after its first send")
        assert took < WAKE_EVERY + AT_ONCE
    finally:
        other.close()


def test_a_relayed_flow_on_a_relayed_route_leaves_python_to_the_threads_own_wake_ups(rig):
    peer = route(rig, relayed=True)
    woken, took = flow_wakes(rig, enveloped(sealed(peer, [udp4(100, n) for n in range(30)]), "right"))
    assert woken <= int(took), "only the thread's own, once a second"
