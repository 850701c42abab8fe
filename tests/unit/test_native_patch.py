"""The native thread's table changed row by row (``Loop.patch``), against a dict that does the same.

The table's maps (receiver index → entry, overlay address → sender) are open addressing with
deletion by backward shift; a small universe of keys collides often, and ``installed()`` says
for every row whether its map finds it where it is. What a row that leaves counted comes back
from ``patch``; the others keep theirs for the next ``counts()``.
"""

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.noise import SessionKeys
from meshvpn.replay import ReplayWindow
from meshvpn.session import Session
from tests.unit.test_fastpath import ACCEPT4, KEY_A, KEY_B, NATIVE_MODULE, SRC4
from tests.unit.test_native_loop import FAR, PEER_KEY, Rig, sealed, sessions, tcp_segments

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")

KEY = bytes(32)
ENDPOINT = (socket.inet_aton("127.0.0.1"), 9)


def entry(index: int) -> tuple:
    return (index, KEY, NATIVE_MODULE.NativeWindow(ReplayWindow()), SRC4, PEER_KEY, FAR)


def sender(overlay: bytes) -> tuple:
    return (overlay, 1, KEY, NATIVE_MODULE.NativeCounter(0), ENDPOINT, b"", FAR)


indexes = st.sampled_from([0, 1, 2, 0xFFFFFFFF] + [i * 40503 for i in range(3, 60)])
overlays = st.sampled_from([bytes([100, 64, 0, i]) for i in range(40)] + [bytes(15) + bytes([i]) for i in range(20)])
patches = st.tuples(st.just("patch"), st.lists(indexes, max_size=8), st.lists(indexes, max_size=12),
                    st.lists(overlays, max_size=8), st.lists(overlays, max_size=12))
replaces = st.tuples(st.just("replace"), st.lists(indexes, max_size=30), st.lists(overlays, max_size=30))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(patches, patches, patches, replaces), max_size=25))
def test_the_maps_find_every_row_patched_in_and_none_patched_out(steps) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        loop = NATIVE_MODULE.Loop(udp.fileno(), tun[0].fileno())
        held_entries, held_senders = set(), set()
        for step in steps:
            if step[0] == "replace":
                _, put_entries, put_senders = step
                assert loop.replace([entry(i) for i in put_entries], [sender(o) for o in put_senders], ACCEPT4, b"",
                                    []) == ([], [])
                held_entries, held_senders = set(put_entries), set(put_senders)
            else:
                _, gone_entries, put_entries, gone_senders, put_senders = step
                assert loop.patch(gone_entries, [entry(i) for i in put_entries], gone_senders,
                                  [sender(o) for o in put_senders], ACCEPT4, b"", []) == ([], [])
                held_entries = (held_entries - set(gone_entries)) | set(put_entries)
                held_senders = (held_senders - set(gone_senders)) | set(put_senders)
            found_entries, found_senders = loop.installed()
            assert None not in found_entries and None not in found_senders, "a row its map does not find"
            assert sorted(found_entries) == sorted(held_entries)
            assert sorted(found_senders) == sorted(held_senders)
    finally:
        for sock in (udp, *tun):
            sock.close()


def test_bad_rows_change_nothing() -> None:
    rig = Rig()
    try:
        rig.loop.patch([], [entry(5)], [], [sender(SRC4)], ACCEPT4, b"", [])
        for bad in (([2**32], [], [], []), ([], [], [b"abc"], []), ([], [("x",)], [], []), ([], [], [], [(SRC4,)])):
            with pytest.raises((ValueError, TypeError, OverflowError)):
                rig.loop.patch(*bad, ACCEPT4, b"", [])
        assert rig.loop.installed() == ([5], [SRC4])
    finally:
        rig.close()


def test_a_row_that_leaves_hands_back_its_counts_and_the_others_keep_theirs() -> None:
    rig = Rig()
    try:
        sender_a, receiver_a = sessions()
        window = NATIVE_MODULE.NativeWindow(receiver_a.window)
        rig.loop.patch([], [(2, receiver_a.recv_key, window, SRC4, PEER_KEY, FAR), entry(7)], [], [], ACCEPT4, b"", [])
        rig.send(sealed(sender_a, tcp_segments(1)))
        rig.loop.start()
        rig.tun_peer.settimeout(5.0)
        rig.tun_peer.recv(1 << 17)  # opened and written: entry 2 has counted it
        rows, send_rows = rig.loop.patch([2, 99], [], [], [], ACCEPT4, b"", [])
        assert [(row[0], row[1]) for row in rows] == [(2, 1)] and send_rows == []
        assert rig.loop.installed() == ([7], [])
        assert rig.loop.counts()[0] == [], "entry 7 counted nothing; entry 2's counts came back once"
    finally:
        rig.close()


def test_counts_come_back_once_the_list_of_rows_that_counted_is_full() -> None:
    """An entry installed again after each packet is noted again each time: past the list's room
    (2 x 17 + 16 for a small table) ``counts()`` looks at every row, and misses none: here the
    first packet of another entry, which found the list full."""
    rig = Rig()
    try:
        sender, receiver = sessions()
        row = (2, receiver.recv_key, NATIVE_MODULE.NativeWindow(receiver.window), SRC4, PEER_KEY, FAR)
        other = Session(SessionKeys(KEY_B, KEY_A, 7, 1, PEER_KEY, False), 0.0)
        to_other = Session(SessionKeys(KEY_A, KEY_B, 1, 7, PEER_KEY, True), 0.0)
        rig.loop.patch([], [row, (7, other.recv_key, NATIVE_MODULE.NativeWindow(other.window), SRC4, PEER_KEY, FAR)],
                       [], [], ACCEPT4, b"", [])
        messages = sealed(sender, tcp_segments(1) * 60)
        rig.loop.start()
        rig.tun_peer.settimeout(5.0)
        handed_back = 0
        for message in messages:
            rig.send([message])
            rig.tun_peer.recv(1 << 17)
            rows, _ = rig.loop.patch([], [row], [], [], ACCEPT4, b"", [])
            handed_back += sum(r[1] for r in rows)
        rig.send(sealed(to_other, tcp_segments(1)))
        rig.tun_peer.recv(1 << 17)
        assert handed_back == len(messages)
        assert [(r[0], r[1]) for r in rig.loop.counts()[0]] == [(7, 1)]
    finally:
        rig.close()
