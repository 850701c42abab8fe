"""Metrics: each role's counters as families, scraped over HTTP on loopback from the role's loop."""

import asyncio
import logging
import random
import socket
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshvpn import keys, metrics
from meshvpn.config import Address, RelayLimits, load_coord_config, load_relay_config
from meshvpn.control import messages as m
from meshvpn.coord.server import CoordServer
from meshvpn.errors import MeshError
from meshvpn.coord.backlog import WriteBacklog
from meshvpn.coord.fanout import RoundTimes
from meshvpn.metrics import Family, coord_families, node_families, relay_families, start_metrics
from meshvpn.relay.core import RelayCore
from meshvpn.relay.server import RelayServer
from meshvpn.sim.nodes import alice_and_bob, ip_packet, seeded
from test_coord_membership import Server  # the frame-by-frame harness of the membership tests

LOOPBACK = Address("127.0.0.1", 0)


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted label pairs) -> value, from exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def as_dict(families: list[Family]) -> dict[tuple, float]:
    return {(f.name, labels): value for f in families for labels, value in f.samples}


async def http_request(address: tuple[str, int], path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    """One HTTP request from a thread (the endpoint answers on this loop): status, type and body."""

    def request():
        req = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers["Content-Type"], err.read().decode()

    return await asyncio.get_running_loop().run_in_executor(None, request)


def scrape(collect, path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    """Start an endpoint, make one HTTP request to it, return status, type and body."""

    async def run():
        endpoint = await start_metrics(LOOPBACK, "test", collect)
        try:
            return await http_request(endpoint.address, path, method)
        finally:
            await endpoint.close()

    return asyncio.run(run())


@pytest.fixture
def pair():
    return alice_and_bob(random.Random)


def test_node_families_read_peer_counters_paths_handshakes_and_rekeys(pair):
    a, b, wire = pair
    now = 0.0
    while now <= 200.0:
        a.send(ip_packet(a.address, b.address, b"x" * 10), now)
        wire.pump(now)
        wire.tick(now)
        now += 5.0
    a.send(ip_packet("100.64.0.1", "100.64.0.77"), now)
    got = as_dict(node_families(a.core, a.data))
    bob = a.core.peers.find("bob").counters
    assert got[("meshvpn_peer_tx_packets", ("bob",))] == bob.tx_packets == 41
    assert got[("meshvpn_peer_tx_bytes", ("bob",))] == 41 * 30
    assert got[("meshvpn_peer_handshakes", ("bob",))] >= 2, "the first handshake and at least one rekey"
    assert got[("meshvpn_peer_rekeys", ("bob",))] == got[("meshvpn_peer_handshakes", ("bob",))] - 1
    assert got[("meshvpn_peer_path", ("bob", "direct"))] == 1.0
    assert got[("meshvpn_peer_path", ("bob", "relay"))] == 0.0
    assert got[("meshvpn_peers", ("direct",))] == 1.0 and got[("meshvpn_peers", ("none",))] == 0.0
    assert got[("meshvpn_drops", ("no peer",))] == 1.0
    assert got[("meshvpn_relay_connected", ())] == 0.0
    received = as_dict(node_families(b.core, b.data))
    assert received[("meshvpn_peer_rx_packets", ("alice",))] == 41


def test_node_families_count_broadcasts_sent_received_and_dropped(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    a.send(ip_packet(a.address, "100.64.0.255"), 0.0)
    a.send(ip_packet("192.168.1.2", "100.64.0.255"), 0.0)
    wire.pump(0.0)
    sent, received = as_dict(node_families(a.core, a.data)), as_dict(node_families(b.core, b.data))
    assert sent[("meshvpn_lan_sent_packets", ("broadcast",))] == 1.0
    assert sent[("meshvpn_lan_sent_copies", ())] == 1.0
    assert sent[("meshvpn_lan_drops", ("not_originated_here",))] == 1.0
    assert received[("meshvpn_lan_received_packets", ("broadcast",))] == 1.0
    assert received[("meshvpn_lan_received_packets", ("multicast",))] == 0.0
    assert received[("meshvpn_lan_groups", ())] == 0.0


def test_a_peer_without_a_path_is_reported_as_none():
    lonely = seeded(random.Random, 3, "carol", "100.64.0.3", ("192.0.2.3", 41641))
    lonely.register(seeded(random.Random, 4, "dave", "100.64.0.4", ("192.0.2.4", 41641)))
    got = as_dict(node_families(lonely.core, lonely.data))
    assert got[("meshvpn_peer_path", ("dave", "none"))] == 1.0
    assert got[("meshvpn_peers", ("none",))] == 1.0


def test_coord_families_count_nodes_connections_messages_and_refusals():
    server = Server()
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    server.join(2, 2, "bob", token)
    server.send(2, m.Ping())
    server.join(3, 3, "mallory", "garbage")
    got = as_dict(coord_families(server.core, {"conn-1", "conn-2", "conn-3"}))
    assert got == {
        ("meshvpn_coord_nodes_online", ()): 2.0,
        ("meshvpn_coord_connections", ()): 3.0,
        ("meshvpn_coord_messages", ("register",)): 3.0,
        ("meshvpn_coord_messages", ("ping",)): 1.0,
        ("meshvpn_coord_auth_failures", ("auth_key_invalid",)): 1.0,
        ("meshvpn_coord_endpoints_dropped", ()): 0.0,
        ("meshvpn_coord_punches_dropped", ()): 0.0,
    }
    rounds = RoundTimes()
    rounds.add(10.0, 10.25, 10.75)
    rounds.add(20.0, 21.0, 21.5)
    backlog = WriteBacklog(1)
    backlog.waits = 3
    got = as_dict(coord_families(server.core, (), rounds, backlog))
    assert [got[(name, ())] for name in ("meshvpn_coord_fanout_rounds", "meshvpn_coord_fanout_wait_seconds",
                                          "meshvpn_coord_fanout_serve_seconds",
                                          "meshvpn_coord_fanout_backlog_waits")] == [2.0, 1.25, 1.0, 3.0]


def test_relay_families_read_the_core_status():
    coord_public = keys.public_key(keys.generate_private_key())
    core = RelayCore(keys.generate_private_key(), coord_public, RelayLimits(), lambda n: bytes(n), 0.0)
    core.stats.forwarded, core.stats.forwarded_bytes, core.stats.hellos, core.stats.runs = 7, 700, 2, 3
    core.drops["rate limited"] += 3
    core.stun.answered = 5
    got = as_dict(relay_families(core, send_errors=4, native={"forwarded natively": 5, "handed to python": 1}))
    assert got[("meshvpn_relay_send_errors", ())] == 4.0
    assert got[("meshvpn_relay_forwarded_packets", ())] == 7.0
    assert got[("meshvpn_relay_forwarded_bytes", ())] == 700.0
    assert got[("meshvpn_relay_hellos", ())] == 2.0
    assert got[("meshvpn_relay_runs", ())] == 3.0
    assert got[("meshvpn_relay_stun_answers", ())] == 5.0
    assert got[("meshvpn_relay_nodes", ())] == 0.0
    assert got[("meshvpn_relay_drops", ("rate limited",))] == 3.0
    assert got[("meshvpn_relay_native", ("forwarded natively",))] == 5.0


def test_the_relay_serves_its_metrics_and_a_rate_status_line(tmp_path):
    keys.write_private_key(tmp_path / "relay.key")
    coord = keys.encode_key(keys.public_key(keys.generate_private_key()))
    (tmp_path / "relay.yaml").write_text(
        f"private_key_file: relay.key\nstate_dir: state\nlisten: 127.0.0.1:0\ncoord:\n  public_key: {coord}\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    now = [1_700_000_000.0]

    async def run():
        server = RelayServer(load_relay_config(tmp_path / "relay.yaml"), clock=lambda: now[0])
        await server.start()
        try:
            server.core.stats.forwarded += 500
            now[0] += 10.0
            return server.status(), server.status(), await http_request(server.metrics.address)
        finally:
            await server.close()

    first, second, (status, _, body) = asyncio.run(run())
    assert (first, second) == ("0 nodes, 50 pkt/s", "0 nodes, 0 pkt/s")
    assert status == 200
    got = samples(body)
    assert got[("meshvpn_relay_forwarded_packets_total", ())] == 500.0
    assert got[("meshvpn_info", (("role", "relay"), ("version", metrics.__version__)))] == 1.0


def test_the_coord_serves_its_metrics(tmp_path):
    keys.write_private_key(tmp_path / "coord.key")
    (tmp_path / "coord.yaml").write_text(
        "private_key_file: coord.key\ndatabase: coord.db\nlisten: 127.0.0.1:0\nstun_listen: 127.0.0.1:0\n"
        "admin_socket: admin.sock\nmetrics:\n  listen: 127.0.0.1:0\n"
    )

    async def run():
        server = CoordServer(load_coord_config(tmp_path / "coord.yaml"))
        await server.start()
        try:
            return await http_request(server.metrics.address)
        finally:
            await server.close()

    status, _, body = asyncio.run(run())
    got = samples(body)
    assert status == 200 and got[("meshvpn_coord_nodes_online", ())] == 0.0
    assert got[("meshvpn_info", (("role", "coord"), ("version", metrics.__version__)))] == 1.0


def test_scrape_over_http_reads_the_counters_at_scrape_time(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address, b"hello"), 0.0)
    wire.pump(0.0)
    status, content_type, body = scrape(lambda: node_families(a.core, a.data))
    assert status == 200 and content_type.startswith("text/plain")
    got = samples(body)
    assert got[("meshvpn_peer_tx_packets_total", (("peer", "bob"),))] == 1.0
    assert got[("meshvpn_peer_path", (("kind", "direct"), ("peer", "bob")))] == 1.0
    assert got[("meshvpn_info", (("role", "test"), ("version", metrics.__version__)))] == 1.0
    a.send(ip_packet(a.address, b.address, b"again"), 1.0)
    assert samples(scrape(lambda: node_families(a.core, a.data))[2])[
        ("meshvpn_peer_tx_packets_total", (("peer", "bob"),))] == 2.0


def test_other_paths_and_methods_are_refused():
    assert scrape(list, "/")[0] == 404
    assert scrape(list, "/metrics", "POST")[0] == 405
    status, _, body = scrape(list, "/metrics?name[]=x")
    assert status == 200 and "meshvpn_info" in body


def test_a_silent_client_does_not_block_scrapes(monkeypatch):
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.2)

    async def run():
        endpoint = await start_metrics(LOOPBACK, "test", list)
        silent = socket.create_connection(endpoint.address)
        try:
            reader, writer = await asyncio.open_connection(*endpoint.address)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            await asyncio.sleep(0.3)
            closed = silent.recv(1) == b""
            return answer, closed
        finally:
            silent.close()
            await endpoint.close()

    answer, closed = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 200 OK") and closed


def test_off_when_not_configured():
    assert asyncio.run(start_metrics(None, "test", list)) is None


def test_without_prometheus_client_it_says_so_and_runs_on(monkeypatch, caplog):
    for name in [n for n in sys.modules if n == "prometheus_client" or n.startswith("prometheus_client.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with caplog.at_level(logging.WARNING, logger="meshvpn.metrics"):
        assert asyncio.run(start_metrics(Address("127.0.0.1", 9100), "test", list)) is None
    [record] = caplog.records
    assert "prometheus-client is not installed" in record.getMessage()


def test_an_address_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MeshError, match="metrics cannot listen on 127.0.0.1:"):
            asyncio.run(start_metrics(Address(*taken.getsockname()), "test", list))
