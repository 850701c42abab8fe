"""What nodes learn about their peers: a large map arrives in parts, and a joiner's map (built
from cached peer entries) always says what the peers' updates said."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.control.mapparts import PeerMapAssembler
from meshvpn.coord.store import MemoryStore, Network

NOW = 1_700_000_000.0
HOME = Network("home", "10.77.0.0/16")
RELAYS = (m.RelayInfo("fra", "203.0.113.50", 7500, bytes(32)), m.RelayInfo("ams", "203.0.113.51", 7500, bytes(32)))
OBSERVER = 1000


class Network_:
    """A membership core and the messages each connection got (frames checked against `encode`)."""

    def __init__(self, part_bytes: int = 256 << 10):
        settings = MembershipSettings((HOME,), RELAYS, keepalive=10.0, peer_map_part_bytes=part_bytes)
        self.core = Membership(MemoryStore(), settings, NOW)
        self.token, _ = self.core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)
        self.inbox: dict[int, list[m.Message]] = {}

    def flush(self) -> None:
        for action in self.core.actions():
            if isinstance(action, Send):
                assert action.payload in (None, m.encode(action.message))
                self.inbox.setdefault(action.conn_id, []).append(action.message)

    def join(self, conn: int, n: int, nat: m.NatInfo | None = None) -> None:
        self.core.node_connected(conn, n.to_bytes(32, "big"), f"198.51.100.{n % 250 + 1}", NOW)
        register = m.Register(f"host{n}", "1", (m.Endpoint("192.168.1.9", 41641),), self.token, nat=nat)
        self.core.receive(conn, m.encode(register), NOW)
        self.flush()

    def send(self, conn: int, message: m.Message) -> None:
        self.core.receive(conn, m.encode(message), NOW)
        self.flush()

    def take(self, conn: int) -> list[m.Message]:
        return self.inbox.pop(conn, [])


def test_a_map_larger_than_a_part_arrives_in_parts_that_make_the_whole_map():
    net = Network_(part_bytes=2000)
    for n in range(1, 41):
        net.join(n, n)
    net.join(41, 41)
    registered, *maps = net.take(41)
    assert isinstance(registered, m.Registered) and all(isinstance(p, m.PeerMap) for p in maps)
    assert len(maps) > 3 and [p.part for p in maps] == list(range(len(maps))) and maps[-1].last
    assembler = PeerMapAssembler()
    whole = [assembler.add(part) for part in maps][-1]
    assert [p.name for p in whole] == [f"host{n}" for n in range(1, 41)]


NODES = range(1, 5)
CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["endpoints", "relay", "nat", "leave", "rejoin"]),
        st.sampled_from(NODES),
        st.integers(1, 3),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(CHANGES)
def test_a_joiners_map_agrees_with_the_last_update_of_every_peer(changes):
    net = Network_()
    net.join(OBSERVER, OBSERVER)
    expected = {}
    for n in NODES:
        net.join(n, n)
        expected[n] = (True, None, None, None)
    for step, (change, n, value) in enumerate(changes):
        online, public, relay, nat = expected[n]
        if change == "rejoin" and not online:
            nat = m.NatInfo(value == 1, "sequential")
            net.join(n, n, nat=nat)
            expected[n] = (True, None, None, nat)
        elif change == "leave" and online:
            net.core.node_disconnected(n, NOW + step)
            net.flush()
            expected[n] = (False, public, None, None)
        elif change == "endpoints" and online:
            public = m.Endpoint("203.0.113.9", value)
            net.send(n, m.Endpoints((m.Endpoint("10.0.0.1", value),), public, nat=nat))
            expected[n] = (True, public, relay, nat)
        elif change == "relay" and online:
            net.send(n, m.RelayHome(RELAYS[value % 2].name))
            expected[n] = (True, public, RELAYS[value % 2].name, nat)
        elif change == "nat" and online:
            nat = m.NatInfo(value == 1, "random")
            net.send(n, m.Endpoints((), public, nat=nat))
            expected[n] = (True, public, relay, nat)
    told = {}
    for message in net.take(OBSERVER):
        if isinstance(message, (m.PeerMap, m.PeerUpdate)):
            told.update((p.key, p) for p in (message.peers if isinstance(message, m.PeerMap) else (message.peer,)))
    assert {n: (p.online, p.public_endpoint, p.home_relay, p.nat) for n, p in
            ((int.from_bytes(k, "big"), p) for k, p in told.items())} == expected
    net.join(OBSERVER + 1, OBSERVER + 1)
    _, peer_map = net.take(OBSERVER + 1)
    seen = {p.key: p for p in peer_map.peers if p.key != OBSERVER.to_bytes(32, "big")}
    assert seen == told
