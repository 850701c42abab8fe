"""Access rules: services, the coord's config and per-node rules, and the node's stateful filter."""

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import config, keys
from meshvpn.config import AccessGroup, AccessPolicy, AccessRule
from meshvpn.control import messages as m
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.coord.policy import Member, access_for
from meshvpn.coord.store import MemoryStore, Network
from meshvpn.errors import ConfigError
from meshvpn.lan import packets
from meshvpn.lan.access import DEFAULT, FLOW_TIMEOUT, FRAGMENT, AccessFilter
from meshvpn.portspec import PROTOCOLS, Service, parse_service
from meshvpn.lan import icmperrors
from meshvpn.lan.flowcache import FlowCache
from meshvpn.lan.packets6 import parse6, parse_any
from meshvpn.sim.packets import ACK, SYN, icmp6_error, icmp_echo, icmp_error, ip, ipv6, tcp, tcp6, udp, udp6

ADDRESSES = {"alice": ip("100.64.0.1"), "bob": ip("100.64.0.2"), "carol": ip("100.64.0.3")}


def svc(*texts: str) -> tuple[Service, ...]:
    return tuple(parse_service(text) for text in texts)


# ----- services


@pytest.mark.parametrize("text, proto, low, high", [
    ("any", None, 0, 65535), ("icmp", 1, 0, 65535), ("tcp", 6, 0, 65535),
    ("udp/27015", 17, 27015, 27015), ("tcp/27000-27050", 6, 27000, 27050),
])
def test_services_parse_and_print_back(text: str, proto: int | None, low: int, high: int) -> None:
    service = parse_service(text)
    assert (service.proto, service.low, service.high) == (proto, low, high) and str(service) == text


@pytest.mark.parametrize("text", ["", "UDP/1", "udp/0", "udp/70000", "udp/9-8", "icmp/8", "any/1", "sctp", "udp/1-", 27015])
def test_bad_services_say_what_is_wrong(text: object) -> None:
    with pytest.raises(ValueError):
        parse_service(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=20), st.from_regex(r"(tcp|udp|icmp|any)(/[0-9]{0,6}(-[0-9]{0,6})?)?", fullmatch=True)))
def test_service_parser_raises_only_value_error(text: str) -> None:
    try:
        service = parse_service(text)
    except ValueError:
        return
    assert parse_service(str(service)) == service
    assert service.proto in (None, *PROTOCOLS.values()) and 0 <= service.low <= service.high <= 65535


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12))
def test_access_info_decoder_raises_only_malformed(value: object) -> None:
    for obj in (value, {"default": "deny", "rules": value}, {"default": "allow", "rules": [{"rule": 0, "action": "deny", "sources": ["*"], "services": value}]}):
        try:
            m.AccessInfo.from_json(obj)
        except m.MalformedMessage:
            pass


# ----- the coord's config and what each node gets


def write_coord(tmp_path: Path, access: str) -> Path:
    keys.write_private_key(tmp_path / "coord.key")
    path = tmp_path / "coord.yaml"
    path.write_text("private_key_file: coord.key\nnetworks:\n  - name: party\n    cidr: 100.64.0.0/24\n"
                    "    access:\n" + "".join(f"      {line}\n" for line in access.strip().splitlines()))
    return path


def test_coord_config_reads_groups_and_rules(tmp_path: Path) -> None:
    loaded = config.load_coord_config(write_coord(tmp_path, """
groups:
  - name: guests
    members: [alice, "tag:guest"]
rules:
  - from: guests
    to: "*"
    services: udp/27015
    action: deny
  - from: "*"
    to: guests
"""))
    access = loaded.networks[0].access
    assert access.default == "allow"
    assert access.groups == (AccessGroup(name="guests", members=("alice", "tag:guest")),)
    assert access.rules == (AccessRule(from_="guests", to="*", services=svc("udp/27015"), action="deny"),
                            AccessRule(from_="*", to="guests", services=svc("any"), action="allow"))


@pytest.mark.parametrize("text, line, key, problem", [
    ("rules:\n  - from: guests\n    to: '*'", 7, "networks[0].access.rules[0].from", "no group 'guests'"),
    ("groups: []\nrules:\n  - from: '*'\n    to: '*'\n  - from: '*'\n    to: servers", 11,
     "networks[0].access.rules[1].to", "no group 'servers'"),
    ("rules:\n  - from: '*'\n    to: '*'\n    services: [udp/27015, udp/99999]", 9,
     "networks[0].access.rules[0].services[1]", "bad port range"),
    ("groups:\n  - name: a\n    members: [bad name]", 8, "networks[0].access.groups[0].members[0]", "bad member"),
    ("default: maybe", 6, "networks[0].access.default", "expected one of allow, deny"),
    ("groups:\n  - name: a\n  - name: a", 8, "networks[0].access.groups[1].name", "used twice"),
])
def test_policy_mistakes_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str, problem: str) -> None:
    path = write_coord(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load_coord_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: {key}: "), str(caught.value)
    assert problem in str(caught.value)


POLICY = AccessPolicy(
    default="allow",
    groups=(AccessGroup(name="guests", members=("carol", "tag:guest")), AccessGroup(name="servers", members=("bob",))),
    rules=(AccessRule(from_="guests", to="servers", services=svc("udp/27015"), action="deny"),
           AccessRule(from_="*", to="*", services=svc("icmp"), action="allow")),
)
NETWORK = (Member("alice"), Member("bob"), Member("carol"), Member("dave", frozenset({"guest"})))


def test_each_node_gets_the_rules_whose_to_group_it_is_in() -> None:
    assert access_for(POLICY, Member("bob"), NETWORK) == m.AccessInfo("allow", (
        m.RuleInfo(0, "deny", ("carol", "dave"), svc("udp/27015")),
        m.RuleInfo(1, "allow", ("*",), svc("icmp")),
    ))
    assert access_for(POLICY, Member("alice"), NETWORK) == m.AccessInfo("allow", (m.RuleInfo(1, "allow", ("*",), svc("icmp")),))


def test_no_rules_sends_nothing_so_everyone_reaches_everyone() -> None:
    assert access_for(None, Member("bob"), NETWORK) is None
    assert access_for(AccessPolicy(), Member("bob"), NETWORK) is None
    assert access_for(AccessPolicy(default="deny"), Member("bob"), NETWORK) == m.AccessInfo("deny", ())


def test_the_coord_sends_a_node_its_rules_when_it_registers() -> None:
    core = Membership(MemoryStore(), MembershipSettings((Network("party", "100.64.0.0/24"),), keepalive=10.0,
                                                        access={"party": POLICY}), 0.0)
    token, _ = core.create_auth_key("party", secret=bytes(32), now=0.0, reusable=True)
    for conn, name in enumerate(("alice", "bob"), start=1):
        core.node_connected(conn, bytes([conn]) * 32, f"203.0.113.{conn}", 0.0)
        core.receive(conn, m.encode(m.Register(name, "0.1.0", (), token)), 0.0)
    registered = {action.conn_id: action.message for action in core.actions()
                  if isinstance(action, Send) and isinstance(action.message, m.Registered)}
    assert registered[2].access == access_for(POLICY, Member("bob"), ())
    assert registered[1].access == m.AccessInfo("allow", (m.RuleInfo(1, "allow", ("*",), svc("icmp")),))
    assert m.decode(m.encode(registered[2])) == registered[2]


def test_older_nodes_skip_the_access_field() -> None:
    registered = m.Registered(bytes(32), "bob", "100.64.0.2", m.NetworkInfo("party", "100.64.0.0/24"),
                              access=access_for(POLICY, Member("bob"), NETWORK))
    older = {name: value for name, value in m.Registered.to_json(registered).items() if name != "access"}
    assert m.decode(m.encode(registered)).access is not None
    assert m.Registered.from_json(older) == m.Registered.from_json({**older, "access": None})


# ----- the node's filter


def bob_filter(default: str = "allow") -> AccessFilter:
    info = access_for(AccessPolicy(default=default, groups=POLICY.groups, rules=POLICY.rules), Member("bob"), NETWORK)
    access = AccessFilter()
    access.configure(info, ADDRESSES)
    return access


def verdict(access: AccessFilter, packet: bytes, now: float = 0.0) -> bool:
    return access.inbound(packets.parse(packet), now)


def test_without_rules_everything_passes_and_nothing_is_tracked() -> None:
    access = AccessFilter()
    access.configure(None, ADDRESSES)
    access.outbound(packets.parse(udp("100.64.0.2", "100.64.0.3", 5000, 27015)), 0.0)
    assert verdict(access, udp("100.64.0.3", "100.64.0.2", 1, 27015)) and access.get_timer() is None
    assert not access.dropped


def test_a_deny_rule_blocks_its_service_from_its_group_only() -> None:
    access = bob_filter()
    assert not verdict(access, udp("100.64.0.3", "100.64.0.2", 40000, 27015))
    assert verdict(access, udp("100.64.0.3", "100.64.0.2", 40000, 27016))
    assert verdict(access, tcp("100.64.0.3", "100.64.0.2", 40000, 27015))
    assert verdict(access, udp("100.64.0.1", "100.64.0.2", 40000, 27015))
    assert access.dropped == {"rule 0": 1}


def test_default_deny_lets_in_only_allowed_services_and_replies() -> None:
    access = bob_filter("deny")
    assert verdict(access, icmp_echo("100.64.0.1", "100.64.0.2"))
    assert not verdict(access, tcp("100.64.0.1", "100.64.0.2", 40000, 22))
    access.outbound(packets.parse(tcp("100.64.0.2", "100.64.0.1", 50000, 22)), now=10.0)
    assert verdict(access, tcp("100.64.0.1", "100.64.0.2", 22, 50000, SYN | ACK), now=11.0)
    assert not verdict(access, tcp("100.64.0.1", "100.64.0.2", 22, 50001, SYN | ACK), now=11.0)
    assert not verdict(access, tcp("100.64.0.3", "100.64.0.2", 22, 50000, SYN | ACK), now=11.0)
    assert access.dropped == {DEFAULT: 3}


def test_replies_beat_a_deny_rule_and_flows_expire() -> None:
    access = bob_filter()
    access.outbound(packets.parse(udp("100.64.0.2", "100.64.0.3", 27015, 27015)), now=0.0)
    assert verdict(access, udp("100.64.0.3", "100.64.0.2", 27015, 27015), now=1.0)
    assert access.get_timer() == 30.0
    assert not verdict(access, udp("100.64.0.3", "100.64.0.2", 27015, 27015), now=FLOW_TIMEOUT[packets.PROTO_UDP])
    access.handle_timer(FLOW_TIMEOUT[packets.PROTO_UDP] + 30.0)
    assert access.get_timer() is None


def test_ping_replies_come_back_through_default_deny() -> None:
    access = AccessFilter()
    access.configure(m.AccessInfo("deny", ()), ADDRESSES)
    assert not verdict(access, icmp_echo("100.64.0.1", "100.64.0.2", reply=True))
    access.outbound(packets.parse(icmp_echo("100.64.0.2", "100.64.0.1")), now=0.0)
    assert verdict(access, icmp_echo("100.64.0.1", "100.64.0.2", reply=True), now=1.0)
    assert not verdict(access, icmp_echo("100.64.0.1", "100.64.0.2"), now=1.0)  # a request is not a reply


def test_later_fragments_follow_their_first() -> None:
    access = bob_filter()
    first = udp("100.64.0.3", "100.64.0.2", 40000, 27016, b"x" * 8, ident=9, frag=0x2000)
    later = udp("100.64.0.3", "100.64.0.2", 0, 0, b"x" * 8, ident=9, frag=0x0002)
    denied_first = udp("100.64.0.3", "100.64.0.2", 40000, 27015, b"x" * 8, ident=10, frag=0x2000)
    denied_later = udp("100.64.0.3", "100.64.0.2", 0, 0, b"x" * 8, ident=10, frag=0x0002)
    assert verdict(access, first) and verdict(access, later)
    assert not verdict(access, denied_first) and not verdict(access, denied_later)
    assert access.dropped == {"rule 0": 1, FRAGMENT: 1}


def test_later_ipv6_fragments_follow_their_first_behind_destination_options() -> None:
    """A Destination Options header after the Fragment header is in the first fragment only: a later
    fragment's Fragment header names it (60) as its next header, not UDP. The datagram is its
    source and identification (RFC 8200 4.5), whatever the later fragments' next header says."""
    access = AccessFilter()
    me, peer = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"
    access.configure(m.AccessInfo("deny", (m.RuleInfo(0, "allow", ("*",), svc("udp/5000")),)), {})
    first = udp6(peer, me, 40000, 5000, b"x" * 8, extensions=((44, b"\0\1\0\0\0\7"), (60, b"")))
    later = ipv6(peer, me, 60, b"x" * 16, extensions=((44, b"\0\x10\0\0\0\7"),))
    stray = ipv6(peer, me, 60, b"x" * 16, extensions=((44, b"\0\x10\0\0\0\x08"),))
    assert (parse6(first).proto, parse6(later).proto) == (packets.PROTO_UDP, 60)
    assert access.inbound(parse6(first), 0.0) and access.inbound(parse6(later), 1.0)
    assert not access.inbound(parse6(stray), 1.0)
    assert access.dropped == {FRAGMENT: 1}


def test_names_resolve_again_when_the_peer_map_changes() -> None:
    access = AccessFilter()
    info = access_for(POLICY, Member("bob"), ())
    access.configure(info, {"bob": ip("100.64.0.2")})
    assert verdict(access, udp("100.64.0.3", "100.64.0.2", 1, 27015))
    access.configure(info, ADDRESSES)
    assert not verdict(access, udp("100.64.0.3", "100.64.0.2", 1, 27015))


def test_answers_to_a_broadcast_query_come_in_from_any_peer_for_a_few_seconds() -> None:
    access = AccessFilter()
    access.configure(m.AccessInfo("deny", ()), ADDRESSES, broadcast=ip("100.64.0.255"))
    for dst in ("100.64.0.255", "255.255.255.255", "224.0.2.60"):
        access.outbound(packets.parse(udp("100.64.0.2", dst, 50000, 27015)), now=10.0)
    assert verdict(access, udp("100.64.0.3", "100.64.0.2", 27015, 50000), now=11.0)
    assert verdict(access, udp("100.64.0.1", "100.64.0.2", 27016, 50000), now=12.9)
    assert not verdict(access, udp("100.64.0.1", "100.64.0.2", 27015, 50001), now=11.0)
    assert not verdict(access, tcp("100.64.0.1", "100.64.0.2", 27015, 50000), now=11.0)
    assert not verdict(access, udp("100.64.0.3", "100.64.0.2", 27015, 50000), now=13.0)


# ----- ICMP errors as related


def error_verdict(access: AccessFilter, packet: bytes, now: float = 0.0) -> bool:
    header = parse_any(packet)
    return access.inbound(header, now, icmperrors.quoted(packet, header))


def test_an_icmp_error_about_a_flow_this_node_started_comes_in_without_an_icmp_rule() -> None:
    """Port Unreachable and Fragmentation Needed about a flow this node started pass as related; the same
    errors about nothing it sent, about a packet it sent someone else, or once the flow expired do not."""
    access = AccessFilter()
    access.configure(m.AccessInfo("deny", ()), ADDRESSES)
    to_alice = udp("100.64.0.2", "100.64.0.1", 40000, 27015, b"query")
    access.outbound(packets.parse(to_alice), now=0.0)
    access.outbound(packets.parse(tcp("100.64.0.2", "100.64.0.1", 50000, 22)), now=0.0)
    assert error_verdict(access, icmp_error("100.64.0.1", "100.64.0.2", to_alice), now=1.0)
    assert error_verdict(access, icmp_error("100.64.0.1", "100.64.0.2", tcp("100.64.0.2", "100.64.0.1", 50000, 22),
                                            code=4, data=1280), now=1.0)
    refused = [icmp_error("100.64.0.1", "100.64.0.2", udp("100.64.0.2", "100.64.0.1", 40001, 27015)),
               icmp_error("100.64.0.3", "100.64.0.2", to_alice),  # carol speaks of a packet alice got
               icmp_error("100.64.0.1", "100.64.0.2", udp("100.64.0.3", "100.64.0.1", 40000, 27015))]
    assert [error_verdict(access, packet, now=1.0) for packet in refused] == [False] * 3
    assert not error_verdict(access, icmp_error("100.64.0.1", "100.64.0.2", to_alice), now=FLOW_TIMEOUT[packets.PROTO_UDP])
    assert access.dropped == {DEFAULT: 4}


def test_an_icmp_error_about_a_flow_the_rules_let_in_comes_in_before_the_rules_judge_icmp() -> None:
    """A server on udp/27016 is open to everyone and icmp is denied: an error about the server's answer
    is related and comes in; one about an answer from 27015, which no rule lets in, meets the icmp rule."""
    access = AccessFilter()
    access.configure(m.AccessInfo("allow", (m.RuleInfo(0, "allow", ("*",), svc("udp/27016")),
                                            m.RuleInfo(1, "deny", ("*",), svc("icmp", "udp/27015")))), ADDRESSES)
    answer = udp("100.64.0.2", "100.64.0.3", 27016, 40000, b"info")
    assert error_verdict(access, icmp_error("100.64.0.3", "100.64.0.2", answer))
    assert not error_verdict(access, icmp_error("100.64.0.3", "100.64.0.2", udp("100.64.0.2", "100.64.0.3", 27015, 40000)))
    assert access.dropped == {"rule 1": 1}


def test_an_icmpv6_packet_too_big_about_a_flow_this_node_started_comes_in() -> None:
    me, peer = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"
    access = AccessFilter()
    access.configure(m.AccessInfo("deny", ()), {"alice": int(ipaddress.IPv6Address(peer))})
    access.cache = FlowCache()
    sent = tcp6(me, peer, 50000, 22, extensions=((60, b""),)) + b"x" * 1400
    access.outbound(parse6(sent), now=0.0)
    access.cache.take()
    assert error_verdict(access, icmp6_error(peer, me, sent), now=1.0)
    assert access.cache.take() == (False, []), "the error's own key would let any Packet Too Big from the peer in"
    assert not error_verdict(access, icmp6_error(peer, me, tcp6(me, peer, 50001, 22)), now=1.0)
    assert access.dropped == {DEFAULT: 1}
