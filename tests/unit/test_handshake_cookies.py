"""A node under a flood of initiations answers with cookies, not Diffie-Hellmans (issue 13, finding 3).

The gate alone on a fake clock, then two real node cores back to back (`alice_and_bob`), bob
flooded with initiations that carry a valid mac1 (bob's public key is no secret) from spoofed
sources: alice's initiation is refused once with a cookie, sent again stamped at once, and the
handshake completes without waiting for a retry.
"""

import random

import pytest

from meshvpn import cookie, wire
from meshvpn.lab.flood import forged_initiation
from meshvpn.node.handshake_cookies import (
    DH_BURST, DH_RATE, PROVEN_BURST, PROVEN_RATE, InitiationGate, cookie_source,
)
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.sim.nodes import alice_and_bob, ip_packet
from meshvpn.wire import Endpoint, MessageType, WireError

OWN = bytes(range(32))
SOURCE = Endpoint("198.51.100.7", 4000)


def loaded_gate(now: float = 0.0) -> tuple[InitiationGate, random.Random]:
    """A gate whose allowance the burst has just used up."""
    rng = random.Random(1)
    gate = InitiationGate(OWN, rng.randbytes, now)
    for n in range(int(DH_BURST)):
        assert gate.admit(forged_initiation(OWN, rng.randbytes), Endpoint("192.0.2.1", 1000 + n), now) is None
    return gate, rng


def cookie_for(gate: InitiationGate, initiation: bytes, source, now: float) -> bytes:
    """The cookie `gate` gives `source` for `initiation`, read as the initiator reads it."""
    refused = gate.admit(initiation, source, now)
    assert refused is not None and refused.reason == "initiation under load: cookie sent"
    reply = cookie.decode_reply(refused.reply)
    assert reply.bound == initiation[4:8], "the reply names the initiation's sender index"
    jar = cookie.CookieJar(OWN)
    assert jar.take(reply, initiation[wire.INITIATION_LEN - wire.MAC1_LEN : wire.INITIATION_LEN], now)
    return jar.current(now)


def stamped(initiation: bytes, value: bytes) -> bytes:
    return cookie.stamp(value, initiation + bytes(wire.MAC2_LEN))


def test_within_the_allowance_every_initiation_is_admitted_and_beyond_it_only_a_cookie_goes_back():
    gate, rng = loaded_gate()
    initiation = forged_initiation(OWN, rng.randbytes)
    refused = gate.admit(initiation, SOURCE, 0.0)
    assert refused.reason == "initiation under load: cookie sent"
    assert wire.message_type(refused.reply) == MessageType.HANDSHAKE_COOKIE
    assert len(refused.reply) == cookie.HANDSHAKE_REPLY_LEN == 64 < len(initiation), "no amplification"
    assert gate.admit(initiation, SOURCE, 1 / DH_RATE) is None, "the allowance refills at DH_RATE"


def test_a_stamped_initiation_is_admitted_under_load_only_from_the_source_its_cookie_was_for():
    gate, rng = loaded_gate()
    initiation = forged_initiation(OWN, rng.randbytes)
    value = cookie_for(gate, initiation, SOURCE, 0.0)
    assert gate.admit(stamped(initiation, value), SOURCE, 0.0) is None
    elsewhere = gate.admit(stamped(initiation, value), Endpoint("198.51.100.8", 4000), 0.0)
    assert elsewhere.reason == "initiation under load: cookie sent"
    other_port = gate.admit(stamped(initiation, value), Endpoint("198.51.100.7", 4001), 0.0)
    assert other_port is not None, "the cookie is for the endpoint, port included"


def test_under_load_proven_initiations_are_still_bounded_per_source():
    gate, rng = loaded_gate()
    initiation = forged_initiation(OWN, rng.randbytes)
    message = stamped(initiation, cookie_for(gate, initiation, SOURCE, 0.0))
    verdicts = [gate.admit(message, SOURCE, 0.0) for _ in range(int(PROVEN_BURST) + 1)]
    assert verdicts[:-1] == [None] * int(PROVEN_BURST)
    assert verdicts[-1].reason == "initiation under load: rate limited" and verdicts[-1].reply is None
    later = 1 / PROVEN_RATE
    while gate.admit(forged_initiation(OWN, rng.randbytes), Endpoint("192.0.2.3", 1000), later) is None:
        pass  # the allowance refilled a little too: spend it
    assert gate.admit(message, SOURCE, later) is None, "one more after 1/PROVEN_RATE s"
    assert gate.admit(message, SOURCE, later).reason == "initiation under load: rate limited"


def test_a_cookie_outlives_one_secret_rotation_and_no_more():
    gate, rng = loaded_gate()
    initiation = forged_initiation(OWN, rng.randbytes)
    message = stamped(initiation, cookie_for(gate, initiation, SOURCE, 0.0))
    flood = [forged_initiation(OWN, rng.randbytes) for _ in range(int(DH_BURST))]
    for now in (cookie.SECRET_LIFETIME, 2 * cookie.SECRET_LIFETIME):
        for n, junk in enumerate(flood):
            gate.admit(junk, Endpoint("192.0.2.2", 1000 + n), now)
        verdict = gate.admit(message, SOURCE, now)
        assert (verdict is None) == (now == cookie.SECRET_LIFETIME), now


def test_the_gate_checks_mac1_first_and_exempts_tcp_paths():
    gate, rng = loaded_gate()
    with pytest.raises(WireError, match="bad mac1"):
        gate.admit(forged_initiation(bytes(32), rng.randbytes), SOURCE, 0.0)
    with pytest.raises(WireError):
        gate.admit(forged_initiation(OWN, rng.randbytes)[:-1], SOURCE, 0.0)
    assert cookie_source(TcpEndpoint("198.51.100.7", 4000), None) is None
    assert gate.admit(forged_initiation(OWN, rng.randbytes), None, 0.0) is None
    relayed = cookie_source(SOURCE, bytes(32))
    assert relayed == bytes(32), "through a relay the cookie proves the key the relay carried it from"


# ---- two real node cores ------------------------------------------------------------------


def flood(node, count: int, now: float) -> None:
    rng = random.Random(7)
    node.receive([(forged_initiation(node.public, rng.randbytes), Endpoint(f"192.0.2.{1 + n % 250}", 1024 + n))
                  for n in range(count)], now)
    node.collect()


def test_an_initiator_answers_the_cookie_at_once_and_the_handshake_completes_under_load():
    a, b, link = alice_and_bob(random.Random)
    flood(b, int(DH_BURST) + 10, 0.0)
    packet = ip_packet(a.address, b.address, b"under load")
    a.send(packet, 0.0)
    link.pump(0.0)
    assert b.tun == [packet], "delivered without waiting for a retry"
    kinds = [data[1] for _, _, data in link.log]
    initiations = [data for _, _, data in link.log if data[1] == MessageType.HANDSHAKE_INIT]
    assert kinds.count(MessageType.HANDSHAKE_COOKIE) == 1
    assert [len(i) for i in initiations] == [wire.INITIATION_LEN, wire.INITIATION_WITH_MAC2_LEN]
    assert initiations[1][: wire.INITIATION_LEN] == initiations[0], "the same initiation, stamped"
    assert b.core.drops["initiation under load: cookie sent"] == 10 + 1
    assert b.core.drops["rejected initiation"] == DH_BURST, "past the burst the flood cost no Diffie-Hellman"


def test_later_initiations_carry_the_cookie_while_it_is_young():
    a, b, link = alice_and_bob(random.Random)
    flood(b, int(DH_BURST) + 1, 0.0)
    a.send(ip_packet(a.address, b.address), 0.0)
    link.pump(0.0)
    peer = a.core.peers.find("bob")
    a.core.handshakes.start(peer.key, a.core._new_index(peer), 1.0)
    assert len(a.core.handshakes.initiation(peer.key, 1.0)) == wire.INITIATION_WITH_MAC2_LEN
    assert len(a.core.handshakes.initiation(peer.key, cookie.COOKIE_LIFETIME)) == wire.INITIATION_LEN


def cookie_held_back(a, b) -> tuple[bytes, bytes]:
    """Pump between `a` and a loaded `b`, holding back b's cookie: a's initiation and that cookie."""
    sent, held = [], []
    for _ in range(20):
        for _, data in a.collect():
            sent.append(data)
            b.receive([(data, a.endpoint)], 0.0)
        for _, data in b.collect():
            (held if data[1] == MessageType.HANDSHAKE_COOKIE else sent).append(data)
            if data[1] != MessageType.HANDSHAKE_COOKIE:
                a.receive([(data, b.endpoint)], 0.0)
    (initiation,) = [data for data in sent if data[1] == MessageType.HANDSHAKE_INIT]
    (reply,) = held
    return initiation, reply


def test_a_cookie_that_does_not_answer_the_live_initiation_is_not_taken():
    a, b, _ = alice_and_bob(random.Random)
    flood(b, int(DH_BURST) + 1, 0.0)
    a.send(ip_packet(a.address, b.address), 0.0)
    initiation, reply = cookie_held_back(a, b)
    forged = reply[:-1] + bytes([reply[-1] ^ 1])
    other = cookie.CookieChecker(b.public, random.Random(3).randbytes, 0.0).handshake_reply(
        initiation[4:8], bytes(16), a.endpoint, 0.0)
    a.receive([(forged, b.endpoint), (other, b.endpoint)], 0.0)
    assert a.core.drops["rejected cookie"] == 2
    assert a.collect() == [], "nothing sent again for a cookie that was not ours"
    a.receive([(reply, b.endpoint)], 0.0)
    assert [len(data) for _, data in a.collect()] == [wire.INITIATION_WITH_MAC2_LEN]
    a.receive([(reply, b.endpoint)], 0.0)
    assert a.collect() == [], "the same cookie again: wait for the retry"
