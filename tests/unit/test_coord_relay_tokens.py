"""The membership core hands online nodes relay tokens, refreshes them, and stops for revoked nodes."""

import itertools

from meshvpn import keys
from meshvpn.control import messages as m
from meshvpn.coord.membership import TOKEN_SLACK, Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network
from meshvpn.relaytoken import TOKEN_LIFETIME, TOKEN_REFRESH, TokenMinter, TokenVerifier

NOW = 1_700_000_000.0
KEEPALIVE = 10.0
COORD = bytes([1]) * 32
RELAY_PRIVATE = {"fra": bytes([2]) * 32, "ams": bytes([3]) * 32}
RELAYS = tuple(m.RelayInfo(name, "203.0.113.50", 7500, keys.public_key(p)) for name, p in RELAY_PRIVATE.items())
NODE = bytes([7]) * 32


def membership():
    counter = itertools.count()
    minter = TokenMinter(COORD, lambda n: next(counter).to_bytes(n, "little"))
    settings = MembershipSettings((Network("home", "10.77.0.0/24"),), RELAYS, keepalive=KEEPALIVE)
    core = Membership(MemoryStore(), settings, NOW, relay_tokens=minter)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    return core, token


def sent(core):
    return [a.message for a in core.actions() if isinstance(a, Send)]


def join(core, token, now=NOW):
    core.node_connected("c1", NODE, "198.51.100.7", now)
    core.receive("c1", m.encode(m.Register("laptop", "0.1", (), auth_key=token)), now)
    return sent(core)


def check(tokens, now):
    """Every relay's token opens at that relay, names the node and expires TOKEN_LIFETIME from `now`."""
    assert [t.relay for t in tokens] == ["fra", "ams"]
    for t in tokens:
        grant = TokenVerifier(RELAY_PRIVATE[t.relay], keys.public_key(COORD)).verify(t.token, NODE, now)
        assert grant.expires == t.expires == int(now + TOKEN_LIFETIME)


def test_registered_carries_a_token_per_relay():
    core, token = membership()
    registered = join(core, token)[0]
    assert isinstance(registered, m.Registered)
    check(registered.relay_tokens, NOW)


def test_online_nodes_get_fresh_tokens_before_the_old_ones_expire():
    core, token = membership()
    join(core, token)
    due = NOW + TOKEN_REFRESH
    for t in range(int(NOW), int(due - TOKEN_SLACK), 5):
        core.receive("c1", m.encode(m.Ping()), t)
        core.handle_timer(t)
        assert not any(isinstance(msg, m.RelayTokens) for msg in sent(core))
    assert core.get_timer() <= due
    core.receive("c1", m.encode(m.Ping()), due)
    core.handle_timer(due)
    [fresh] = [msg for msg in sent(core) if isinstance(msg, m.RelayTokens)]
    check(fresh.tokens, due)
    assert core.get_timer() <= due + TOKEN_REFRESH


def test_refreshes_due_close_together_share_one_timer_call():
    core, token = membership()
    join(core, token)
    core.node_connected("c2", bytes([9]) * 32, "203.0.113.9", NOW + TOKEN_SLACK / 2)
    core.receive("c2", m.encode(m.Register("desk", "0.1.0", (), token)), NOW + TOKEN_SLACK / 2)
    core.actions()
    for conn in ("c1", "c2"):
        core.receive(conn, m.encode(m.Ping()), NOW + TOKEN_REFRESH)
    core.handle_timer(NOW + TOKEN_REFRESH)
    refreshed = [action.conn_id for action in core.actions()
                 if isinstance(action, Send) and isinstance(action.message, m.RelayTokens)]
    assert refreshed == ["c1", "c2"]
    assert core.get_timer() >= NOW + TOKEN_REFRESH + TOKEN_SLACK


def test_a_revoked_node_gets_no_more_tokens():
    core, token = membership()
    join(core, token)
    core.revoke("laptop")
    core.actions()
    core.handle_timer(NOW + TOKEN_REFRESH)
    assert not any(isinstance(msg, m.RelayTokens) for msg in sent(core))


def test_without_a_minter_there_are_no_tokens():
    settings = MembershipSettings((Network("home", "10.77.0.0/24"),), RELAYS, keepalive=KEEPALIVE)
    core = Membership(MemoryStore(), settings, NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW)[0]
    assert join(core, token)[0].relay_tokens == ()
