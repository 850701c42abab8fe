"""Peer-relay grants at the coord: by name or tag, from coord.yaml and the admin verbs, kept in the
store across a restart and seen by every coord instance on one database."""

import pytest

from meshvpn import cli, keys
from meshvpn.control import messages as m
from meshvpn.coord import admin
from meshvpn.coord.events import Announce
from meshvpn.coord.membership import AdminError, Membership, MembershipSettings, Send
from meshvpn.coord.pgstore import PostgresStore
from meshvpn.coord.store import MemoryStore, Network, PeerRelayGrant, SqliteStore
from meshvpn.relaytoken import TokenMinter, TokenVerifier, network_tag

PARTY = Network("party", "100.64.0.0/24")
OFFICE = Network("office", "100.65.0.0/24")


def core_on(store, **config) -> Membership:
    return Membership(store, MembershipSettings((PARTY, OFFICE), keepalive=10.0, **config), 0.0)


def join(core: Membership, conn: int, name: str, network: str = "party") -> None:
    token, _ = core.create_auth_key(network, secret=bytes([conn]) * 32, now=0.0)
    core.node_connected(conn, bytes([conn]) * 32, f"203.0.113.{conn}", 0.0)
    core.receive(conn, m.encode(m.Register(name, "0.1.0", (), token)), 0.0)
    assert any(isinstance(a, Send) and isinstance(a.message, m.Registered) for a in core.actions())


def relays_of(core: Membership) -> dict[str, bool]:
    return {n["name"]: n["peer_relay"] for n in admin.answer(core, {"cmd": "nodes_list"}, 0.0, bytes)["nodes"]}


def test_a_node_is_allowed_by_name_and_the_nodes_of_a_tag_by_tag() -> None:
    core = core_on(MemoryStore())
    for conn, name in ((1, "host"), (2, "guest"), (3, "laptop")):
        join(core, conn, name)
    join(core, 4, "desk", "office")
    assert relays_of(core) == {"host": False, "guest": False, "laptop": False, "desk": False}
    answer = admin.answer(core, {"cmd": "relays_allow", "member": "host", "network": None}, 0.0, bytes)
    assert answer == {"network": "party", "member": "host", "nodes": ["host"]}
    core.tag("laptop", "fast")
    core.tag("desk", "fast")
    answer = admin.answer(core, {"cmd": "relays_allow", "member": "tag:fast", "network": "party"}, 0.0, bytes)
    assert answer["nodes"] == ["laptop"]  # the office's `fast` node relays nothing for the party
    assert relays_of(core) == {"host": True, "guest": False, "laptop": True, "desk": False}
    core.tag("laptop", "fast", remove=True)
    assert relays_of(core)["laptop"] is False  # a tag grant follows the tags as they are now


def test_bad_grants_are_refused_with_the_reason() -> None:
    core = core_on(MemoryStore())
    join(core, 1, "host")
    for req, reason in (
        ({"member": "tag:fast", "network": None}, "a tag needs its network"),
        ({"member": "tag:no spaces", "network": "party"}, "bad tag"),
        ({"member": "nobody", "network": None}, "nobody"),
        ({"member": "host", "network": "office"}, "is in network party, not office"),
    ):
        assert reason in admin.answer(core, {"cmd": "relays_allow", **req}, 0.0, bytes)["error"]
    assert "no peer-relay grant" in admin.answer(
        core, {"cmd": "relays_disallow", "member": "host", "network": None}, 0.0, bytes)["error"]
    assert core.store.peer_relays() == []


def test_disallow_takes_back_an_admin_grant_but_not_one_of_the_config() -> None:
    core = core_on(MemoryStore(), peer_relays={"party": ("tag:host",)})
    join(core, 1, "host")
    join(core, 2, "guest")
    core.tag("host", "host")
    core.allow_peer_relay("guest")
    core.allow_peer_relay("guest")
    listing = admin.answer(core, {"cmd": "relays_list"}, 0.0, bytes)["peer_relays"]
    assert listing == [{"network": "party", "member": "tag:host", "source": "config", "nodes": ["host"]},
                       {"network": "party", "member": "guest", "source": "admin", "nodes": ["guest"]}]
    assert admin._format_relays({"peer_relays": listing}).splitlines()[1].split() == ["party", "tag:host", "config", "host"]
    with pytest.raises(AdminError, match="by coord.yaml"):
        core.disallow_peer_relay("tag:host", "party")
    assert core.disallow_peer_relay("guest") == PeerRelayGrant("party", "guest")
    assert relays_of(core) == {"host": True, "guest": False}
    assert [log.text for log in core.actions() if not isinstance(log, Send)].count("peer relay allowed") == 1


def test_the_admin_verbs_parse_into_requests() -> None:
    args = cli.build_parser().parse_args(["coord", "relays", "allow", "tag:host", "--network", "party"])
    assert admin._request_from(args) == {"cmd": "relays_allow", "member": "tag:host", "network": "party"}
    args = cli.build_parser().parse_args(["coord", "relays", "disallow", "bob"])
    assert admin._request_from(args) == {"cmd": "relays_disallow", "member": "bob", "network": None}
    assert admin._request_from(cli.build_parser().parse_args(["coord", "relays", "list"])) == {"cmd": "relays_list"}


def test_grants_survive_a_coord_restart(tmp_path) -> None:
    path = str(tmp_path / "coord.db")
    core = core_on(SqliteStore(path))
    join(core, 1, "host")
    core.allow_peer_relay("host")
    core.store.close()
    restarted = core_on(SqliteStore(path))
    assert relays_of(restarted) == {"host": True}
    restarted.store.close()


def test_a_grant_made_on_one_coord_instance_is_seen_by_another(postgres_dsn) -> None:
    one, two = core_on(PostgresStore(postgres_dsn)), core_on(PostgresStore(postgres_dsn))
    try:
        join(one, 1, "host")
        two.changed_elsewhere("party", bytes([1]) * 32, None)  # as the instances' channel tells it
        one.allow_peer_relay("host")
        assert relays_of(two) == {"host": True}
        two.disallow_peer_relay("host")
        assert relays_of(one) == {"host": False}
    finally:
        one.store.close()
        two.store.close()


# ----- what the coord tells nodes: members are offered the relay, the relay hears its part

SERVER = m.RelayInfo("fra", "203.0.113.20", 7500, bytes([200]) * 32)


def private(conn: int) -> bytes:
    return bytes([conn]) * 32


def relaying_core(store=None) -> Membership:
    minter = TokenMinter(bytes([100]) * 32, lambda n: bytes(n))
    settings = MembershipSettings((PARTY, OFFICE), (SERVER,), keepalive=10.0)
    return Membership(store or MemoryStore(), settings, 0.0, relay_tokens=minter)


def arrive(core: Membership, conn: int, name: str, capable: bool = True, network: str = "party") -> list:
    """`name` comes online (its key is the public key of `private(conn)`) with a public endpoint."""
    token, _ = core.create_auth_key(network, secret=bytes([conn]) * 32, now=0.0)
    core.node_connected(conn, keys.public_key(private(conn)), f"198.51.100.{conn}", 0.0)
    core.receive(conn, m.encode(m.Register(name, "0.1.0", (), token, public_endpoint=m.Endpoint(
        f"198.51.100.{conn}", 41000 + conn), peer_relays=capable or None)), 0.0)
    return sent(core)


def sent(core: Membership) -> list[tuple[int, m.Message]]:
    return [(a.conn_id, a.message) for a in core.actions() if isinstance(a, Send)]


def to(messages: list, conn: int, kind: type) -> list:
    return [msg for c, msg in messages if c == conn and isinstance(msg, kind)]


def test_members_are_offered_an_allowed_peer_relay_with_a_token_and_it_hears_its_part() -> None:
    core = relaying_core()
    arrive(core, 1, "host")
    arrive(core, 2, "guest")
    arrive(core, 3, "old", capable=False)
    core.allow_peer_relay("host")
    out = sent(core)
    host = keys.public_key(private(1))
    offer = m.RelayInfo("host", "198.51.100.1", 41001, host, peer=True)
    assert to(out, 1, m.Relays) == [m.Relays((SERVER,), to(out, 1, m.Relays)[0].relay_tokens, relaying=True)]
    (relays,) = to(out, 2, m.Relays)
    assert relays.relays == (SERVER, offer) and not relays.relaying
    token = next(t for t in relays.relay_tokens if t.relay == "host")
    grant = TokenVerifier(private(1), keys.public_key(bytes([100]) * 32)).verify(token.token, keys.public_key(private(2)), 1.0)
    assert grant.network == network_tag("party")
    assert to(out, 3, m.Relays) == []  # an older node is offered nothing it cannot take
    assert [u.peer.peer_relay for u in to(out, 2, m.PeerUpdate) + to(out, 3, m.PeerUpdate)] == [True, True]
    late = to(arrive(core, 4, "late"), 4, m.Registered)[0]
    assert late.relays == (SERVER, offer) and {t.relay for t in late.relay_tokens} == {"fra", "host"}
    assert not late.relaying
    core.receive(2, m.encode(m.RelayHome("host")), 1.0)
    assert not [msg for _, msg in sent(core) if isinstance(msg, m.Error)]


def test_a_relay_that_is_disallowed_or_goes_offline_is_withdrawn() -> None:
    core = relaying_core()
    arrive(core, 1, "host")
    arrive(core, 2, "guest")
    core.tag("host", "fast")
    core.allow_peer_relay("tag:fast", "party")
    sent(core)
    core.tag("host", "fast", remove=True)
    out = sent(core)
    assert to(out, 1, m.Relays)[0].relaying is False and to(out, 2, m.Relays)[0].relays == (SERVER,)
    core.tag("host", "fast")
    assert to(sent(core), 2, m.Relays)[0].relays[-1].name == "host"
    core.node_disconnected(1, 2.0)
    assert to(sent(core), 2, m.Relays)[0].relays == (SERVER,)
    assert to(arrive(core, 1, "host"), 1, m.Registered)[0].relaying is True
    assert to(sent(core), 2, m.Relays) == []  # told already, in the same batch as its registration


def test_a_node_that_cannot_relay_or_has_no_public_endpoint_is_not_offered() -> None:
    core = relaying_core()
    arrive(core, 1, "old", capable=False)
    arrive(core, 2, "guest")
    core.allow_peer_relay("old")
    assert to(sent(core), 2, m.Relays) == []
    core.node_connected(5, keys.public_key(private(5)), "198.51.100.5", 0.0)
    token, _ = core.create_auth_key("party", secret=bytes([5]) * 32, now=0.0)
    core.receive(5, m.encode(m.Register("hidden", "0.1.0", (), token, peer_relays=True)), 0.0)
    core.allow_peer_relay("hidden")
    assert to(sent(core), 2, m.Relays) == []
    assert core.relays_for(core._conns[2]) == (SERVER,)


def test_a_relay_online_on_another_instance_is_offered_here() -> None:
    store = MemoryStore()
    one, two = relaying_core(store), relaying_core(store)
    arrive(one, 1, "host")
    arrive(two, 2, "guest")
    for action in one.actions(announcements=True):
        if isinstance(action, Announce):
            two.changed_elsewhere(action.network, action.subject, action.message, origin="one")
    sent(two)
    two.allow_peer_relay("host")  # on instance two; the server publishes the node it concerns
    one.changed_elsewhere("party", keys.public_key(private(1)), None, origin="two")
    out = [a for a in one.actions(announcements=True)]
    assert to([(a.conn_id, a.message) for a in out if isinstance(a, Send)], 1, m.Relays)[0].relaying
    for action in out:
        if isinstance(action, Announce):
            two.changed_elsewhere(action.network, action.subject, action.message, origin="one")
    assert to(sent(two), 2, m.Relays)[0].relays[-1] == m.RelayInfo(
        "host", "198.51.100.1", 41001, keys.public_key(private(1)), peer=True)
