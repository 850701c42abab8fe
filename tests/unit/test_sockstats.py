"""Kernel drops and buffer sizes of the node's UDP sockets, from the kernel's own tables."""

import asyncio
import socket

from meshvpn.metrics import socket_families
from meshvpn.node.mappings import MappingSockets
from meshvpn.node.sockstats import drops_by_inode, socket_report, udp_errors

UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  110: 00000000:A269 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48213 2 0000000000000000 17
  592: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48114 2 0000000000000000 0
"""
SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 21375 325 2592 24281 2590 1 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""


def test_drops_by_socket_inode_and_the_namespace_errors():
    assert drops_by_inode([UDP, "garbage\nnot a row\n"]) == {48213: 17, 48114: 0}
    assert udp_errors(SNMP) == {"in_errors": 2592, "rcvbuf_errors": 2590, "sndbuf_errors": 1}
    assert udp_errors("") == {}


def test_a_real_socket_is_found_with_its_buffers():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.bind(("127.0.0.1", 0))
        [entry] = socket_report({"main": sock})
        assert entry == {"socket": "main", "drops": 0, "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                         "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
        assert entry["rcvbuf"] >= 1 << 16
    assert socket_report({"closed": sock}) == []


def test_pinned_sockets_get_the_buffers_of_the_main_socket():
    loop = asyncio.new_event_loop()
    buffer = 4 << 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as main, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        main.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        target.bind(("127.0.0.1", 0))
        mappings = MappingSockets(loop, "127.0.0.1", lambda *args: None, buffer)
        try:
            assert mappings.open([b"probe"] * 2, target.getsockname()) == 2
            for pinned in mappings.sockets().values():
                for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    assert pinned.getsockopt(socket.SOL_SOCKET, option) == main.getsockopt(socket.SOL_SOCKET, option)
        finally:
            mappings.close()
            loop.close()


def test_socket_metrics():
    families = socket_families([{"socket": "main", "drops": 3, "rcvbuf": 8, "sndbuf": 8}], {"rcvbuf_errors": 5})
    got = {(f.name, labels): value for f in families for labels, value in f.samples}
    assert got == {("meshvpn_socket_drops", ("main",)): 3.0, ("meshvpn_socket_rcvbuf_bytes", ("main",)): 8.0,
                   ("meshvpn_udp_errors", ("rcvbuf_errors",)): 5.0}
