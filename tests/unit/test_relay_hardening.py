"""Issue 13 at the relay's core: unauthenticated hellos cost no Diffie-Hellman, networks stay apart,
an address another node holds is taken only with proof, idle streams end.

Each test here failed on the code before the fix (the Diffie-Hellman came before the token and
was cached only for registered nodes, tokens named no network, a registered stream outlived its
registration).
"""

import hashlib

import pytest
from nacl import bindings

from meshvpn import keys, wire
from meshvpn.cookie import COOKIE_LIFETIME, REPLY_LEN, SECRET_LIFETIME, CookieChecker, CookieJar
from meshvpn.relay import core as relay_core
from meshvpn.relay.core import DH_BURST, HELLO_MAX_SKEW, IDLE_TIMEOUT, RelayCore, Stream
from meshvpn.relaytoken import TokenError, TokenMinter, TokenVerifier, network_tag
from meshvpn.timestamps import TimestampFile
from meshvpn.wire import Endpoint, MessageType
from test_relay_core import (
    A_EP, ALICE, ASKED, B_EP, BOB, COORD, LIMITS, M_EP, MALLORY, MALLORY_TOKEN, NOW, RELAY, RELAY_PUBLIC, counting_random,
    cookie_jar, envelope, hello, proven_hello, refusals, register,
)


@pytest.fixture
def relay():
    return RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)


@pytest.fixture
def dh_count(monkeypatch):
    """Counts the relay's X25519 computations (the real function still runs)."""
    calls = []
    real = wire.box_key

    def counting(private, public):
        if private == RELAY:
            calls.append(public)
        return real(private, public)

    monkeypatch.setattr(relay_core.wire, "box_key", counting)
    return calls


def many_keys(count):
    return [hashlib.sha256(n.to_bytes(4, "big")).digest() for n in range(count)]


def junk_box(message: bytes) -> bytes:
    """The same hello with its box garbled: a spoofer who saw the token but lacks the key."""
    sealed = wire.decode_sealed(message)
    start = message.index(sealed.box)
    return message[:start] + bytes(len(sealed.box)) + message[start + len(sealed.box):]


def test_a_forged_token_costs_no_diffie_hellman(relay, dh_count):
    for n in range(50):
        forged = hello(MALLORY, token=bytes([n]) * 80)
        relay.receive(forged, Endpoint("192.0.2.1", 1000 + n), NOW)
    assert dh_count == [] and relay.drops == {"token failed authentication": 50}
    assert relay.datagrams_to_send() == []


def test_a_sniffed_token_replayed_from_many_sources_costs_no_diffie_hellman_and_only_small_cookies(relay, dh_count):
    captured = junk_box(hello(ALICE))
    for n in range(200):
        relay.receive(captured, Endpoint("192.0.2.1", 1000 + n), NOW)
    assert dh_count == [] and relay.drops == {ASKED: 200}
    replies = relay.datagrams_to_send()
    assert len(replies) == 200 and all(len(reply) == REPLY_LEN < len(captured) for _, reply in replies)


def test_a_sniffed_token_with_cookies_for_its_sources_costs_one_diffie_hellman(relay, dh_count):
    captured = junk_box(hello(ALICE))
    for n in range(200):
        source = Endpoint("192.0.2.1", 1000 + n)
        relay.receive(captured, source, NOW)
        [(_, reply)] = relay.datagrams_to_send()
        jar = CookieJar(RELAY_PUBLIC)
        assert jar.consume(reply, {bytes(24)}, NOW)
        relay.receive(jar.stamp(captured, NOW), source, NOW)
    assert len(dh_count) == 1 and refusals(relay) == {"bad hello": 200}
    assert relay.datagrams_to_send() == []


def test_under_load_a_refreshing_hello_that_needs_a_diffie_hellman_needs_a_cookie(relay, monkeypatch):
    monkeypatch.setattr(relay_core, "BOX_KEY_CACHE", 4)
    register(relay, ALICE, A_EP)
    for n, private in enumerate(many_keys(int(DH_BURST))):
        register(relay, private, Endpoint("198.51.100.1", 1024 + n))
    assert relay.stats.hellos == 1 + DH_BURST, "every one proven, with its Diffie-Hellman"
    relay.receive(hello(ALICE, NOW + 0.001), A_EP, NOW + 0.001)
    [(dst, reply)] = relay.datagrams_to_send()
    assert dst == A_EP and wire.message_type(reply) == MessageType.RELAY_COOKIE, "Alice's box key was evicted"
    assert relay.drops["unproven hello: under load"] == 1
    [(dst, ack)] = proven_hello(relay, ALICE, A_EP, NOW + 0.001)
    assert wire.decode_sealed(ack).kind == MessageType.RELAY_HELLO_ACK
    assert relay.registered_link(keys.public_key(ALICE)) == A_EP


def test_a_registered_node_keeps_its_registration_under_load_without_cookies(relay):
    register(relay, ALICE, A_EP)
    for n, private in enumerate(many_keys(int(DH_BURST) + 10)):
        relay.receive(hello(private), Endpoint("198.51.100.1", 1024 + n), NOW)
    relay.datagrams_to_send()
    [(_, ack)] = register(relay, ALICE, A_EP, NOW + 1)
    assert wire.decode_sealed(ack).kind == MessageType.RELAY_HELLO_ACK


def test_a_token_holder_spoofing_a_registered_address_gets_only_a_small_cookie(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    spoofed = hello(MALLORY, NOW + 1)
    relay.receive(spoofed, A_EP, NOW + 1)
    [(dst, reply)] = relay.datagrams_to_send()
    assert dst == A_EP and wire.message_type(reply) == MessageType.RELAY_COOKIE
    assert len(reply) == REPLY_LEN < len(spoofed), "no amplification towards the spoofed address"
    relay.receive(envelope(ALICE), B_EP, NOW + 1)
    assert [dst for dst, _ in relay.datagrams_to_send()] == [A_EP]
    assert relay.registered_link(keys.public_key(MALLORY)) is None


def test_a_cookie_is_good_only_for_the_address_it_was_made_for():
    checker = CookieChecker(RELAY_PUBLIC, counting_random(), NOW)
    jar = CookieJar(RELAY_PUBLIC)
    nonce = bytes([7]) * 24
    assert jar.consume(checker.reply(nonce, M_EP, NOW), {nonce}, NOW)
    plain = hello(MALLORY, token=MALLORY_TOKEN)
    stamped = jar.stamp(plain, NOW)
    assert checker.valid(stamped, M_EP, NOW) and not checker.valid(stamped, A_EP, NOW)
    assert checker.valid(stamped, M_EP, NOW + SECRET_LIFETIME), "the previous secret is honoured"
    assert not checker.valid(stamped, M_EP, NOW + 2 * SECRET_LIFETIME)
    assert jar.stamp(plain, NOW + COOKIE_LIFETIME) == plain, "an old cookie is not used"


def test_envelopes_stay_within_one_network():
    minter = TokenMinter(COORD, counting_random())
    relay = RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)
    for private, ep, network in ((ALICE, A_EP, "home"), (BOB, B_EP, "work"), (MALLORY, Endpoint("203.0.113.5", 1), "home")):
        token = minter.mint(RELAY_PUBLIC, keys.public_key(private), NOW, network=network_tag(network))[0]
        register(relay, private, ep, token=token)
    relay.datagrams_to_send()
    relay.receive(envelope(BOB), A_EP, NOW)
    assert relay.datagrams_to_send() == [] and relay.drops["destination in another network"] == 1
    relay.receive(envelope(MALLORY), A_EP, NOW)
    assert [dst for dst, _ in relay.datagrams_to_send()] == [Endpoint("203.0.113.5", 1)]


def test_a_stream_whose_registration_lapsed_is_closed(relay):
    stream = Stream(1)
    relay.stream_opened(stream, keys.public_key(ALICE), NOW)
    relay.receive(hello(ALICE), stream, NOW)
    relay.handle_timer(NOW + IDLE_TIMEOUT)
    assert relay.registered_link(keys.public_key(ALICE)) is None
    assert relay.streams_to_close() == [stream]


def test_a_garbled_cookie_reply_is_not_taken():
    jar = CookieJar(RELAY_PUBLIC)
    relay = RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)
    register(relay, ALICE, A_EP)
    relay.receive(hello(ALICE, NOW + 1, nonce=bytes([7]) * 24), B_EP, NOW + 1)
    [(_, reply)] = relay.datagrams_to_send()
    assert not jar.consume(reply, {bytes([8]) * 24}, NOW + 1), "a reply to a hello we did not send"
    assert not jar.consume(reply[:-1] + bytes([reply[-1] ^ 1]), {bytes([7]) * 24}, NOW + 1)
    assert jar.stamp(b"x" * 40, NOW + 1) == b"x" * 40


def test_a_token_of_the_first_layout_is_refused_not_read_with_a_far_expiry():
    """Tokens used to hold a u64 expiry; a relay of either layout must refuse the other's."""
    nonce = bytes(24)
    body = keys.public_key(ALICE) + (int(NOW) + 600).to_bytes(8, "little")
    old = nonce + bindings.crypto_box_afternm(body, nonce, wire.box_key(COORD, RELAY_PUBLIC))
    with pytest.raises(TokenError, match="failed authentication"):
        TokenVerifier(RELAY, keys.public_key(COORD)).verify(old, keys.public_key(ALICE), NOW)


def test_hello_floors_survive_a_restart_through_the_state_file_and_are_pruned_in_place(tmp_path):
    """Issue 13, finding 8 (the relay's part), at the core: the shell's record restores the floors."""
    relay = RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)
    register(relay, ALICE, A_EP)
    record = TimestampFile(tmp_path, "hellos.json", "hellos", 8)
    record.save({key: ms.to_bytes(8, "big") for key, ms in relay.latest_hello.items()})
    restarted = RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW + 1)
    restarted.restore_hellos({key: int.from_bytes(ms, "big") for key, ms in record.load().items()})
    restarted.receive(cookie_jar(restarted, M_EP, NOW + 1).stamp(hello(ALICE), NOW + 1), M_EP, NOW + 1)
    assert restarted.drops == {"replayed hello": 1} and restarted.registered_link(keys.public_key(ALICE)) is None
    floors = restarted.latest_hello
    restarted.handle_timer(NOW + HELLO_MAX_SKEW + 2)
    assert restarted.latest_hello is floors and floors == {}, "pruned in the dict the shell's journal reads"
