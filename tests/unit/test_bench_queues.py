"""The queue sampler's parsers (meshvpn.bench.queues) on captured output."""

from meshvpn.bench.queues import qdisc_backlog, spread, udp_rx_queue, unacked

PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0200C80A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 80211 2 0000000000000000 0
  456: 0264336C:A2A9 00000000:0000 07 00000000:000504F8 00:00000000 00000000     0        0 80113 2 0000000000000000 0
"""

SS = """\
State Recv-Q Send-Q Local Address:Port Peer Address:Port Process
ESTAB 0      2787360  10.200.0.3:47702  10.200.0.2:5201
\t bbr wscale:10,10 rto:252 rtt:51.201/19.304 mss:1328 cwnd:1868 bytes_sent:720336901 unacked:624 notsent:2787360
"""

TC = """\
qdisc pfifo_fast 0: root refcnt 2 bands 3 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1
 Sent 1119494681 bytes 811461 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 3000b 2p requeues 0
"""


def test_the_udp_socket_of_the_port_is_found_by_its_hex_port():
    assert udp_rx_queue(PROC_NET_UDP, 41641) == 0x504F8
    assert udp_rx_queue(PROC_NET_UDP, 53) == 0
    assert udp_rx_queue(PROC_NET_UDP, 4000) is None


def test_unacked_segments_and_a_flow_with_nothing_in_flight():
    assert unacked(SS) == 624
    assert unacked(SS.replace(" unacked:624", "")) == 0
    assert unacked("State Recv-Q Send-Q\n") is None


def test_qdisc_backlog_and_summary():
    assert qdisc_backlog(TC) == 3000
    assert qdisc_backlog("") is None
    assert spread([5, 1, 3, 2, 4]) == "p50 3, p90 5, max 5 (n=5)"
    assert spread([]) == "-"
