"""Node tags: stored (and added to an older database), set and cleared by the admin verbs, and
seen by the access rules each node gets when it registers."""

import sqlite3
from dataclasses import replace

import pytest

from meshvpn import cli
from meshvpn.config import AccessGroup, AccessPolicy, AccessRule
from meshvpn.control import messages as m
from meshvpn.coord import admin, store as store_module
from meshvpn.coord.membership import AdminError, Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network, SqliteStore
from meshvpn.portspec import parse_service

PARTY = Network("party", "100.64.0.0/24")
POLICY = AccessPolicy(groups=(AccessGroup(name="guests", members=("tag:guest",)),),
                      rules=(AccessRule(from_="guests", to="*", services=(parse_service("udp/27015"),), action="deny"),))


def test_a_database_from_before_tags_gains_an_empty_tag_list(tmp_path) -> None:
    path = tmp_path / "coord.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    for statement in store_module._MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO networks VALUES ('party', '100.64.0.0/24', 0)")
    db.execute("INSERT INTO nodes (key, network, name, address, hostname, created, version, approved, revoked,"
               " ephemeral, local_endpoints) VALUES (?, 'party', 'bob', '100.64.0.2', 'bob', 1.0, '0.1', 1, 0, 0, '[]')",
               (bytes(32),))
    db.commit()
    db.close()
    store = SqliteStore(str(path))
    try:
        (bob,) = store.nodes()
        assert bob.tags == ()
        store.put_node(replace(bob, tags=("guest",)))
        assert store.get_node(bytes(32)).tags == ("guest",)
    finally:
        store.close()


def online(core: Membership, conn: int, name: str, token: str) -> m.Registered:
    core.node_connected(conn, bytes([conn]) * 32, f"203.0.113.{conn}", 0.0)
    core.receive(conn, m.encode(m.Register(name, "0.1.0", (), token)), 0.0)
    return next(a.message for a in core.actions() if isinstance(a, Send) and isinstance(a.message, m.Registered))


def test_tags_are_set_cleared_and_reach_the_rules_at_the_next_registration() -> None:
    core = Membership(MemoryStore(), MembershipSettings((PARTY,), keepalive=10.0, access={"party": POLICY}), 0.0)
    token, _ = core.create_auth_key("party", secret=bytes(32), now=0.0, reusable=True)
    assert online(core, 1, "carol", token).access == m.AccessInfo("allow", (m.RuleInfo(0, "deny", (), (parse_service("udp/27015"),)),))
    assert core.tag("carol", "guest").tags == ("guest",)
    assert core.tag("carol", "guest").tags == ("guest",)
    assert any(log.text == "node tagged" for log in core.actions() if not isinstance(log, Send))
    core.node_disconnected(1, 1.0)
    assert online(core, 1, "carol", token).access.rules[0].sources == ("carol",)
    assert core.tag("carol", "guest", remove=True).tags == ()
    with pytest.raises(AdminError, match="bad tag"):
        core.tag("carol", "no spaces")
    with pytest.raises(AdminError, match="no node"):
        core.tag("dave", "guest")


def test_admin_verbs_tag_and_untag() -> None:
    core = Membership(MemoryStore(), MembershipSettings((PARTY,), keepalive=10.0), 0.0)
    token, _ = core.create_auth_key("party", secret=bytes(32), now=0.0)
    online(core, 1, "bob", token)
    tagged = admin.answer(core, {"cmd": "node_tag", "node": "bob", "tag": "server"}, 0.0, bytes)
    assert tagged["node"]["tags"] == ["server"]
    assert admin._format_node(tagged) == "bob (party, 100.64.0.2): online, tags server"
    assert admin.answer(core, {"cmd": "node_untag", "node": "bob", "tag": "server"}, 0.0, bytes)["node"]["tags"] == []
    assert "error" in admin.answer(core, {"cmd": "node_tag", "node": "bob", "tag": 7}, 0.0, bytes)
    args = cli.build_parser().parse_args(["coord", "nodes", "tag", "bob", "server"])
    assert admin._request_from(args) == {"cmd": "node_tag", "node": "bob", "tag": "server"}
    args = cli.build_parser().parse_args(["coord", "nodes", "untag", "bob", "server"])
    assert admin._request_from(args) == {"cmd": "node_untag", "node": "bob", "tag": "server"}
