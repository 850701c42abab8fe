"""Every decoder that reads bytes from the network, fuzzed: only the typed remote error escapes.

Decoders raise `RemoteProtocolError` (or a subclass) and nothing else; the relay and coord cores
drop and count, and raise nothing at all. In the unit suite each target runs a small slice
(`MESHVPN_FUZZ_EXAMPLES`, 150 by default); `make fuzz` drives the same targets through
hypothesis's `fuzz_one_input` with a million inputs or more (`tests/fuzz/run.py`).
"""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshvpn import cookie, keys, noise, stun_codec, turn_codec, wire
from meshvpn.channel import ServerChannel
from meshvpn.config import RelayLimits
from meshvpn.control import messages as m
from meshvpn.coord import instances
from meshvpn.coord.membership import Membership, MembershipSettings
from meshvpn.coord.store import MemoryStore, Network
from meshvpn.errors import RemoteProtocolError
from meshvpn.lan import igmp, names
from meshvpn.lan import packets as lan_packets
from meshvpn.node import netlink
from meshvpn.node.handshake_cookies import DH_BURST, InitiationGate
from meshvpn.node.portmap import natpmp, pcp
from meshvpn.node.portmap.core import PortMapper
from meshvpn.relay.core import RelayCore
from meshvpn.relaytoken import TokenMinter, TokenVerifier
from meshvpn.stun import binding_response
from meshvpn.wire import MessageType

from fuzzing import mutated

NOW = 1_700_000_000.0
SERVER = bytes([2]) * 32
SERVER_PUBLIC = keys.public_key(SERVER)
COORD = bytes([1]) * 32
NODE = bytes([3]) * 32
NODE_PUBLIC = keys.public_key(NODE)
SLICE = settings(max_examples=int(os.environ.get("MESHVPN_FUZZ_EXAMPLES", "100")), deadline=None,
                 database=None, suppress_health_check=list(HealthCheck))
BATCH = int(os.environ.get("MESHVPN_FUZZ_BATCH", "4"))
"""Inputs per example: `make fuzz` raises it, since hypothesis's own cost per example dominates."""
INPUTS = [0]
"""Inputs decoded so far (for the long run's count)."""


def batches(strategy):
    return st.lists(strategy, min_size=1, max_size=BATCH)
TOKEN = TokenMinter(COORD, lambda n: bytes(n)).mint(SERVER_PUBLIC, NODE_PUBLIC, NOW)[0]
VALID_HELLO = wire.seal(MessageType.RELAY_HELLO, NODE_PUBLIC, bytes(24), wire.box_key(NODE, SERVER_PUBLIC),
                        wire.RelayHello(int(NOW * 1000), TOKEN))


def mutations(seed: bytes):
    """`seed` a few edits off (`fuzzing.mutated`): reaches past the first checks of a decoder."""
    return mutated(st.just(seed))


def headers():
    """Bytes after a valid meshvpn header of any type."""
    return st.builds(lambda kind, body: wire.header(kind) + body, st.sampled_from(list(MessageType)),
                     st.binary(max_size=200))


packets = st.one_of(st.binary(max_size=300), headers(), mutations(VALID_HELLO))


def only_remote_errors(decode, data) -> None:
    INPUTS[0] += 1
    try:
        decode(data)
    except RemoteProtocolError:
        pass


BOX = wire.box_key(SERVER, NODE_PUBLIC)
WIRE_DECODERS = (
    wire.message_type,
    lambda b: wire.decode_endpoint(b, 0),
    lambda b: wire.HandshakeInitiation.decode(b, wire.mac1_key(SERVER_PUBLIC)),
    lambda b: wire.HandshakeResponse.decode(b, wire.mac1_key(SERVER_PUBLIC)),
    wire.transport_receiver_index,
    wire.decode_relay,
    lambda b: wire.open_sealed(wire.decode_sealed(b), BOX),
    cookie.decode_reply,
    TokenVerifier(SERVER, keys.public_key(COORD)).open,
)


@SLICE
@given(batches(packets))
def test_wire_decoders(datagrams):
    for data in datagrams:
        for decode in WIRE_DECODERS:
            only_remote_errors(decode, data)


@SLICE
@given(batches(st.one_of(packets, st.binary(min_size=wire.INITIATION_LEN, max_size=wire.INITIATION_LEN))))
def test_noise_initiation(datagrams):
    for data in datagrams:
        INPUTS[0] += 1
        assert noise.consume_initiation(SERVER, data) is None or len(data) == wire.INITIATION_LEN


@SLICE
@given(st.lists(st.one_of(st.binary(max_size=200), st.just(wire.INITIATION_LEN.to_bytes(4, "big"))), max_size=4))
def test_channel_frames(chunks):
    channel = ServerChannel(SERVER, lambda key: True, bytes([9]) * 32)
    for chunk in chunks:
        INPUTS[0] += 1
        try:
            channel.receive_data(chunk)
        except RemoteProtocolError:
            return


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
control_frames = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda t, obj: json.dumps({**obj, "type": t}).encode(),
              st.sampled_from(["register", "endpoints", "punch_request", "relay_home", "ping", "x"]),
              st.dictionaries(st.text(max_size=12), json_values, max_size=5)),
)


@SLICE
@given(batches(control_frames))
def test_control_messages(frames):
    for data in frames:
        only_remote_errors(m.decode, data)


@SLICE
@given(batches(st.one_of(st.binary(max_size=200), mutations(bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff"
    "80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249"
    "c1b571a280280004e57a3bcf")))))
def test_stun_and_turn(datagrams):
    for data in datagrams:
        only_remote_errors(stun_codec.decode, data)
        only_remote_errors(turn_codec.decode_channel_data, data)
        only_remote_errors(turn_codec.StreamFramer().feed, data)
        reply = binding_response(data, ("198.51.100.7", 4000), ("192.0.2.1", 3478), ("192.0.2.2", 3479))
        assert reply is None or len(reply.data) <= len(data) + 12


@SLICE
@given(batches(packets), st.sampled_from([("203.0.113.3", 4000), ("2001:db8::3", 4000)]))
def test_relay_core_drops_and_counts(datagrams, src):
    relay = RelayCore(SERVER, keys.public_key(COORD), RelayLimits(), lambda n: bytes(n), NOW)
    for data in datagrams:
        INPUTS[0] += 1
        relay.receive(data, src, NOW)
    relay.datagrams_to_send()


@SLICE
@given(batches(control_frames))
def test_coord_core_refuses_and_never_raises(frames):
    core = Membership(MemoryStore(), MembershipSettings((Network("home", "10.77.0.0/24"),), keepalive=10.0), NOW)
    for conn, frame in enumerate(frames):
        INPUTS[0] += 1
        core.node_connected(conn, NODE_PUBLIC, "203.0.113.3", NOW)
        core.receive(conn, frame, NOW)
    core.actions()


@SLICE
@given(batches(st.one_of(st.binary(max_size=120), mutations(cookie.CookieChecker(SERVER_PUBLIC, bytes, NOW).reply(
    bytes(24), ("203.0.113.3", 4000), NOW)), mutations(cookie.CookieChecker(SERVER_PUBLIC, bytes, NOW).handshake_reply(
    bytes(4), bytes(16), ("203.0.113.3", 4000), NOW)))))
def test_cookie_jar(replies):
    jar = cookie.CookieJar(SERVER_PUBLIC)
    for data in replies:
        INPUTS[0] += 1
        jar.consume(data, {bytes(24)}, NOW)
        only_remote_errors(lambda b: jar.take(cookie.decode_reply(b), bytes(16), NOW), data)


def loaded_gate() -> InitiationGate:
    """A node's gate past its Diffie-Hellman allowance: every initiation needs its cookie."""
    gate = InitiationGate(SERVER_PUBLIC, bytes, NOW)
    for _ in range(int(DH_BURST)):
        gate.admit(INITIATION, wire.Endpoint("203.0.113.3", 4000), NOW)
    return gate


INITIATION = noise.Initiator(NODE, SERVER_PUBLIC, 7, bytes([5]) * 32, NOW).initiation
GATE = loaded_gate()
STAMPED = cookie.stamp(bytes(16), INITIATION + bytes(wire.MAC2_LEN))


@SLICE
@given(batches(st.one_of(packets, mutations(INITIATION), mutations(STAMPED),
                         st.binary(min_size=wire.INITIATION_WITH_MAC2_LEN, max_size=wire.INITIATION_WITH_MAC2_LEN))))
def test_initiation_gate(datagrams):
    for data in datagrams:
        only_remote_errors(lambda b: GATE.admit(b, wire.Endpoint("203.0.113.3", 4000), NOW), data)
        only_remote_errors(lambda b: GATE.admit(b, NODE_PUBLIC, NOW), data)


NETLINK_READ = (netlink.link_message(2, "eth0", True) + netlink.address_message(2, "10.1.0.11", 24, "eth0")
                + netlink.route_message(0, "10.1.0.1", 2))


@SLICE
@given(batches(st.one_of(st.binary(max_size=200), mutations(NETLINK_READ))))
def test_netlink_changes(reads):
    for data in reads:
        only_remote_errors(netlink.decode, data)


PCP_MAP = bytes.fromhex("0281000000001c200000002a000000000000000000000000" "000102030405060708090a0b11000000a2a9a2a9"
                        "00000000000000000000ffffcb007164")
NATPMP_MAP = bytes.fromhex("008100000000002aa2a9a2a900001c20")


@SLICE
@given(batches(st.one_of(st.binary(max_size=120), mutations(PCP_MAP), mutations(NATPMP_MAP))))
def test_port_mapping_answers(datagrams):
    """NAT-PMP and PCP from the gateway: the decoders raise only the remote error, the machine counts."""
    machine = PortMapper(41641, "10.1.0.11", bytes)
    machine.probe(NOW)
    for data in datagrams:
        only_remote_errors(natpmp.decode, data)
        only_remote_errors(pcp.decode, data)
        machine.receive(data, NOW)
    machine.outputs()


IGMP_REPORT = lan_packets.ipv4(0x64400002, 0xE00000FB, 2, bytes.fromhex("1600fa04e00000fb"), ttl=1)
DNS_QUERY = bytes.fromhex("12340100000100000000000003626f62056c6f63616c046d6573680000010001")
DIRECTORY = names.Directory("local", "mesh", [names.Host("bob", "100.64.0.2", None)])


@SLICE
@given(batches(st.one_of(st.binary(max_size=120), mutations(IGMP_REPORT), mutations(DNS_QUERY))))
def test_lan_party_decoders(datagrams):
    """What peers and the TUN hand the LAN party: IP headers, IGMP reports, DNS queries to the mesh names."""
    for data in datagrams:
        only_remote_errors(lan_packets.parse, data)
        only_remote_errors(igmp.parse_report, data)
        only_remote_errors(lambda b: names.respond(b, DIRECTORY, forward=False), data)


NOTIFICATIONS = [json.dumps(note).encode() for note in (
    {"from": "a1", "network": "home", "key": keys.encode_key(NODE_PUBLIC), "frame": None},
    {"from": "a1", "network": "home", "punch": keys.encode_key(NODE_PUBLIC),
     "frame": m.encode(m.Punch(NODE_PUBLIC, ())).decode()},
)]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["from", "network", "key", "punch", "frame"]), inner, max_size=5))


@SLICE
@given(batches(st.one_of(st.binary(max_size=200), *map(mutations, NOTIFICATIONS),
                         JSON.map(lambda v: json.dumps(v).encode()))))
def test_instance_notifications(payloads):
    """What another coord instance (or anyone with the database) puts on the channel."""
    for data in payloads:
        only_remote_errors(instances.parse, data.decode("utf-8", "replace"))


TARGETS = (test_wire_decoders, test_noise_initiation, test_channel_frames, test_control_messages,
           test_stun_and_turn, test_relay_core_drops_and_counts, test_coord_core_refuses_and_never_raises,
           test_cookie_jar, test_initiation_gate, test_netlink_changes, test_port_mapping_answers,
           test_lan_party_decoders, test_instance_notifications)
