"""The kernel's word on a TCP connection's sending side (`meshvpn.node.tcpinfo`); the backed-off
case needs packets dropped, in a namespace: `tests/lab/test_tcpinfo_lab.py`."""

import socket
import struct

from meshvpn.node.tcpinfo import backed_off, retransmitting


def tcp_info(backoff: int = 0, retransmits: int = 0, probes: int = 0) -> bytes:
    """The start of a ``struct tcp_info``: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked..."""
    return struct.pack("=8B5I", 1, 0, retransmits, probes, backoff, 0, 0, 0, 200000, 0, 1448, 536, 0) + bytes(80)


def test_data_waiting_behind_a_backed_off_timer_is_retransmitting():
    assert backed_off(tcp_info(backoff=3, retransmits=3), queued=120) is True, "sent into a dead link"
    assert backed_off(tcp_info(backoff=2, probes=2), queued=60) is True, "never sent: the route was gone"


def test_data_with_no_timer_fired_or_nothing_waiting_is_not():
    assert backed_off(tcp_info(), queued=300) is False, "in flight, its ack on the way"
    assert backed_off(tcp_info(backoff=2), queued=0) is False, "all acknowledged since"
    assert backed_off(b"\x01" * 5, queued=10) is None


def test_an_idle_connection_on_loopback_is_not_retransmitting():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"x")
                assert accepted.recv(1) == b"x"
                assert retransmitting(client) is False
        assert retransmitting(server) is None, "a listener says nothing"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert retransmitting(udp) is None and retransmitting(None) is None
