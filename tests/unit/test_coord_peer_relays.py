"""Peer-relay grants at the coord: by name or tag, from coord.yaml and the admin verbs, kept in the
store across a restart and seen by every coord instance on one database."""

import pytest

from meshvpn import cli
from meshvpn.control import messages as m
from meshvpn.coord import admin
from meshvpn.coord.membership import AdminError, Membership, MembershipSettings, Send
from meshvpn.coord.pgstore import PostgresStore
from meshvpn.coord.store import MemoryStore, Network, PeerRelayGrant, SqliteStore

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
