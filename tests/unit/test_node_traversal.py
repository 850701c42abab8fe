"""Hard-NAT traversal in the node core: port samples before punches, birthday mappings, pinned sockets."""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.keys import public_key
from meshvpn.node.core import CoreConfig, NodeCore
from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.node.events import OpenMappings, SampleWanted
from meshvpn.node.candidates import candidates_of
from meshvpn.node.traversal import (
    FALLBACK_RESAMPLE_INTERVAL, RESAMPLE_INTERVAL, RESAMPLE_MAX, SAMPLE_SOCKET, nat_info, profile_of,
)
from meshvpn.wire import Endpoint, MessageType

NETWORK = m.NetworkInfo(name="home", cidr="100.64.0.0/24")
SEQUENTIAL = NatProfile(False, Allocation.SEQUENTIAL)
RANDOM = NatProfile(False, Allocation.RANDOM)
PEER_PUBLIC = m.Endpoint("198.51.100.2", 41641)
PEER_LAN = m.Endpoint("10.2.0.11", 41641)
PUBLIC_EP, LAN_EP = Endpoint("198.51.100.2", 41641), Endpoint("10.2.0.11", 41641)
PACKET = bytes([0x45]) + bytes(15) + bytes([100, 64, 0, 2]) + b"data"


def private(seed: int) -> bytes:
    return random.Random(seed).randbytes(32)


def core_with_peer(local: NatProfile, peer: NatProfile) -> tuple[NodeCore, bytes]:
    core = NodeCore(private(1), random.Random(5).randbytes, CoreConfig())
    core.punching.set_nat_profile(local)
    key = public_key(private(2))
    core.coord_message(m.Registered(public_key(private(1)), "alice", "100.64.0.1", NETWORK), 0.0)
    core.set_own_endpoints([Endpoint("10.1.0.10", 41641)], Endpoint("203.0.113.100", 41641))
    info = m.PeerInfo(key, "bob", "100.64.0.2", True, (PEER_LAN,), PEER_PUBLIC, nat=nat_info(peer))
    core.coord_message(m.PeerMap((info,)), 0.0)
    events(core)
    return core, key


def events(core: NodeCore) -> list:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def probe_targets(core: NodeCore) -> list[Endpoint]:
    return [dst for dst, data in core.datagrams_to_send() if data[1] == MessageType.PROBE]


def test_profiles_round_trip_through_the_report() -> None:
    for profile in (NatProfile(), SEQUENTIAL, RANDOM):
        assert profile_of(nat_info(profile)) == profile
    assert profile_of(None) == NatProfile()


def test_sequential_side_samples_before_it_asks_for_a_punch() -> None:
    core, key = core_with_peer(SEQUENTIAL, NatProfile())
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    assert events(core) == [SampleWanted(key)]
    assert probe_targets(core) == [] and core.coord_messages_to_send() == []
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.05)
    assert core.coord_messages_to_send() == [m.PunchRequest(key, sample=m.Endpoint("203.0.113.100", 30010))]
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN), nat=nat_info(NatProfile())), 0.1)
    assert PUBLIC_EP in probe_targets(core)


def test_a_punch_that_answers_no_sample_of_ours_asks_for_one_first() -> None:
    core, key = core_with_peer(SEQUENTIAL, NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC,)), 0.0)
    assert events(core) == [SampleWanted(key)] and probe_targets(core) == []
    core.coord_message(m.Punch(key, (PEER_PUBLIC,)), 0.01)
    assert events(core) == [] and probe_targets(core) == [], "the sample is on its way"


def test_two_sequential_sides_punch_only_with_the_peers_fresh_sample() -> None:
    core, key = core_with_peer(SEQUENTIAL, SEQUENTIAL)
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.01)
    core.coord_message(m.Punch(key, (PEER_PUBLIC,), nat=nat_info(SEQUENTIAL)), 0.02)
    assert probe_targets(core) == [], "without the peer's sample our ports would be wasted"
    sample = m.Endpoint("198.51.100.2", 40000)
    core.coord_message(m.Punch(key, (sample, PEER_PUBLIC, PEER_LAN), nat=nat_info(SEQUENTIAL), sample=sample), 0.1)
    targets = probe_targets(core)
    assert targets[:16] == [Endpoint("198.51.100.2", 40001 + i) for i in range(16)]
    assert PUBLIC_EP not in targets, "the stale mapping is not probed"
    assert LAN_EP in targets


def test_easy_side_probes_the_ports_above_a_sequential_peers_sample() -> None:
    core, key = core_with_peer(NatProfile(), SEQUENTIAL)
    sample = m.Endpoint("198.51.100.2", 40000)
    core.coord_message(m.Punch(key, (sample, PEER_LAN), nat=nat_info(SEQUENTIAL), sample=sample), 0.0)
    assert probe_targets(core)[:16] == [Endpoint("198.51.100.2", 40001 + i) for i in range(16)]


def test_sequential_side_resamples_on_a_schedule_until_a_path_is_found() -> None:
    core, key = core_with_peer(SEQUENTIAL, NatProfile())
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    asked, now = [], 0.0
    while now < 4 * RESAMPLE_INTERVAL * RESAMPLE_MAX:
        for event in events(core):
            if isinstance(event, SampleWanted):
                asked.append(now)
                core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), now)
        now = core.get_timer()
        core.handle_timer(now)
    assert asked == [i * RESAMPLE_INTERVAL for i in range(RESAMPLE_MAX)]


def samples_asked(core: NodeCore, key: bytes, until: float) -> list[float]:
    """Answer every `SampleWanted` (a fresh port each time) up to `until`; when each was asked."""
    asked, now, port = [], 0.0, 30010
    while now <= until:
        for event in events(core):
            if isinstance(event, SampleWanted):
                asked.append(now)
                port += 2
                core.punching.port_sampled(key, Endpoint("203.0.113.100", port), now)
        if (due := core.get_timer()) is None:
            break
        now = due
        core.handle_timer(now)
    return asked


@pytest.mark.parametrize("peer", [NatProfile(), RANDOM])
def test_a_sequential_side_that_fell_back_keeps_sampling_through_the_fast_window(peer) -> None:
    core, key = core_with_peer(SEQUENTIAL, peer)
    core.set_relay(Endpoint("198.51.100.20", 7500), 0.0)
    bob = core.peers.by_key[key]
    core.packet_from_tun(bob, PACKET, 0.0)
    asked = samples_asked(core, key, 90.0)
    assert bob.route is not None and bob.route.path.kind.value == "relay"
    fell_back, window = bob.paths.config.relay_after, bob.paths.config.fast_window
    later = [at for at in asked if at > RESAMPLE_INTERVAL * RESAMPLE_MAX]
    assert later, "the samples went on after the fall back"
    gaps = [b - a for a, b in zip(asked, asked[1:])]
    assert max(gaps) <= FALLBACK_RESAMPLE_INTERVAL + 1e-9
    assert max(later) > fell_back + window - 2 * FALLBACK_RESAMPLE_INTERVAL
    assert max(later) <= fell_back + window, "and stop with the fast window"


def test_birthday_side_opens_many_mappings_once_per_window() -> None:
    core, key = core_with_peer(RANDOM, NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    [opened] = [e for e in events(core) if isinstance(e, OpenMappings)]
    assert opened.endpoint == PUBLIC_EP and len(opened.probes) == 256
    assert {probe[1] for probe in opened.probes} == {MessageType.PROBE}
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 1.0)
    assert not any(isinstance(e, OpenMappings) for e in events(core))


def test_a_campaign_the_shell_could_not_open_whole_is_opened_again_by_the_next_punch() -> None:
    """Other peers' campaigns held the shell's socket limit: that window never started."""
    core, key = core_with_peer(RANDOM, NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    assert any(isinstance(e, OpenMappings) for e in events(core))
    core.traversal.mappings_short(key)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 1.5)
    assert [e.endpoint for e in events(core) if isinstance(e, OpenMappings)] == [PUBLIC_EP]
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 2.0)
    assert not any(isinstance(e, OpenMappings) for e in events(core)), "a whole campaign holds its window"


def test_after_a_network_change_the_next_punch_opens_mappings_at_once_and_the_pins_are_gone() -> None:
    """The shell closed the old network's extra sockets: the window of the campaign that opened
    them no longer holds the next one back, and nothing stays pinned to them."""
    core, key = core_with_peer(RANDOM, NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    events(core)
    core.socket_for.heard(PUBLIC_EP, 3)
    core.punching.reprobe(1.0)
    assert not core.socket_for and core.socket_for.get(PUBLIC_EP) is None
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 1.1)
    assert [e.endpoint for e in events(core) if isinstance(e, OpenMappings)] == [PUBLIC_EP]


@pytest.mark.parametrize("local, peer", [(NatProfile(), NatProfile()), (RANDOM, RANDOM), (SEQUENTIAL, RANDOM)])
def test_no_birthday_unless_random_meets_endpoint_independent(local, peer) -> None:
    core, key = core_with_peer(local, peer)
    core.coord_message(m.Punch(key, (PEER_PUBLIC,)), 0.0)
    assert not any(isinstance(e, OpenMappings) for e in events(core))


def test_a_probe_on_an_extra_socket_pins_its_source_to_that_socket() -> None:
    alice, bob_key = core_with_peer(RANDOM, NatProfile())
    bob = NodeCore(private(2), random.Random(6).randbytes, CoreConfig())
    bob.coord_message(m.PeerMap((m.PeerInfo(alice.public_key, "alice", "100.64.0.1", True),)), 0.0)
    src = Endpoint("198.51.100.2", 41641)
    probe = lambda: bob.probes.probe(alice.public_key, bytes(8), Endpoint("203.0.113.100", 50000), bytes(24), 0.0)
    alice.datagram_received(probe(), src, 0.0, via=7)
    assert alice.socket_for.get(src) == 7
    replies = [dst for dst, data in alice.datagrams_to_send() if data[1] == MessageType.PROBE_REPLY]
    assert replies == [src]
    other = Endpoint("198.51.100.3", 1)
    alice.datagram_received(probe(), other, 0.0)
    assert alice.socket_for.get(src) == 7 and alice.socket_for.get(other) is None, "the main socket pins nothing"
    assert alice.socket_for.keep_only({src}) == {7}


def test_sequential_side_punches_on_its_own_sample_against_a_random_peer() -> None:
    core, key = core_with_peer(SEQUENTIAL, RANDOM)
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    assert events(core) == [SampleWanted(key)]
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.05)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN), nat=nat_info(RANDOM)), 0.1)
    assert PUBLIC_EP in probe_targets(core), "a random-port peer never sends a sample to wait for"


@pytest.mark.parametrize("peer", [NatProfile(), SEQUENTIAL, RANDOM])
def test_a_sequential_side_whose_samples_never_come_back_still_gets_the_relay(peer) -> None:
    core, key = core_with_peer(SEQUENTIAL, peer)
    core.set_relay(Endpoint("198.51.100.20", 7500), 0.0)
    bob = core.peers.by_key[key]
    core.packet_from_tun(bob, PACKET, 0.0)
    while (now := core.get_timer()) is not None and now <= 2.0:
        core.handle_timer(now)
    assert probe_targets(core) == [], "no sample, no punch"
    assert bob.route is not None and bob.route.path.kind.value == "relay"
    assert bob.route.endpoint == Endpoint("198.51.100.20", 7500)


def sampled_from_socket(local: NatProfile, peer: NatProfile, sid: int = 4) -> tuple[NodeCore, bytes]:
    """A sequential side that sampled from extra socket `sid` and got the coord's answering punch at 0.1 s."""
    core, key = core_with_peer(local, peer)
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    events(core)
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.05, via=sid)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN), nat=nat_info(peer)), 0.1)
    return core, key


def test_a_sequential_side_punches_from_the_socket_of_its_sample() -> None:
    """Its NAT's next mapping, towards the peer, must be the one right above the sample, whatever the
    main socket sent to the peer's address before (an address-dependent NAT keeps that mapping)."""
    core, key = sampled_from_socket(SEQUENTIAL, RANDOM)
    targets = probe_targets(core)
    assert targets == [PUBLIC_EP, LAN_EP], "the peer's public address first: a LAN probe takes a port too"
    assert all(core.socket_for.get(dst) == 4 for dst in targets)


def test_a_probe_heard_on_the_main_socket_is_answered_from_it_even_during_a_campaign() -> None:
    core, key = sampled_from_socket(SEQUENTIAL, RANDOM)
    probe_targets(core)
    src = Endpoint("198.51.100.2", 52000)
    core.socket_for.heard(src, None)
    core.socket_for.probing(src, 4)
    core.socket_for.heard(PUBLIC_EP, None)
    assert core.socket_for.get(src) is None and core.socket_for.get(PUBLIC_EP) is None


def test_the_samples_socket_is_left_once_a_path_is_found_or_the_sample_is_old() -> None:
    core, key = sampled_from_socket(SEQUENTIAL, RANDOM)
    probe_targets(core)
    traversal = core.traversal
    assert traversal.probe_from(key, Endpoint("198.51.100.9", 1), 0.2) and traversal.pinned.get(
        Endpoint("198.51.100.9", 1)) == 4
    late = 0.05 + SAMPLE_SOCKET
    assert traversal.probe_from(key, Endpoint("198.51.100.9", 2), late) == Endpoint("198.51.100.9", 2)
    assert traversal.pinned.get(Endpoint("198.51.100.9", 2)) is None
    core2, key2 = sampled_from_socket(SEQUENTIAL, RANDOM)
    core2.traversal.path_found(key2)
    core2.traversal.probe_from(key2, Endpoint("198.51.100.9", 3), 0.2)
    assert core2.traversal.pinned.get(Endpoint("198.51.100.9", 3)) is None


def test_an_easy_side_keeps_its_main_socket_and_its_order() -> None:
    core, key = core_with_peer(NatProfile(), NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    assert probe_targets(core) == [LAN_EP, PUBLIC_EP] and not core.socket_for


def test_the_answering_punch_starts_a_new_burst_at_once() -> None:
    """A burst already running (the path died a moment ago) would send its next round later, when the
    sample's ports may be gone: the sample's punch is a round now."""
    core, key = core_with_peer(SEQUENTIAL, RANDOM)
    bob = core.peers.by_key[key]
    bob.paths.set_candidates(candidates_of(bob.info), 0.0)
    core.punching.punch(bob, 0.0)
    assert probe_targets(core) == [PUBLIC_EP, LAN_EP], "a burst runs: the next round is due at 0.2 s"
    core.packet_from_tun(bob, PACKET, 0.05)
    events(core)
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.06, via=2)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN), nat=nat_info(RANDOM)), 0.1)
    assert probe_targets(core) == [PUBLIC_EP, LAN_EP]
    assert core.get_timer() == pytest.approx(0.3), "the burst goes on from the new round"


def test_a_punch_repeating_the_sample_we_punched_on_asks_for_no_new_sample() -> None:
    """Both sides' requests make the coord punch both: the second punch carries the peer's sample
    again, and sampling anew for it would set the two sides sampling in turn for ever."""
    core, key = core_with_peer(SEQUENTIAL, SEQUENTIAL)
    core.packet_from_tun(core.peers.by_key[key], PACKET, 0.0)
    events(core)
    core.punching.port_sampled(key, Endpoint("203.0.113.100", 30010), 0.01, via=1)
    sample = m.Endpoint("198.51.100.2", 40000)
    punch = m.Punch(key, (sample, PEER_LAN), nat=nat_info(SEQUENTIAL), sample=sample)
    core.coord_message(punch, 0.05)
    assert probe_targets(core)
    core.coord_message(punch, 0.06)
    assert events(core) == [] and probe_targets(core) == []
    newer = m.Endpoint("198.51.100.2", 40100)
    core.coord_message(m.Punch(key, (newer, PEER_LAN), nat=nat_info(SEQUENTIAL), sample=newer), 0.07)
    assert events(core) == [SampleWanted(key)], "a new sample of the peer's needs one of ours"


def test_a_network_change_that_keeps_our_addresses_keeps_the_extra_sockets_pins() -> None:
    """A link down a while and back: the NAT may still hold the extra sockets' mappings, and the
    shell keeps the sockets, so a path on one of them comes back with the link."""
    core, key = core_with_peer(RANDOM, NatProfile())
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    events(core)
    core.socket_for.heard(PUBLIC_EP, 3)
    core.punching.reprobe(1.0, sockets_closed=False)
    assert core.socket_for.get(PUBLIC_EP) == 3
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 1.1)
    assert not any(isinstance(e, OpenMappings) for e in events(core)), "the campaign's window still runs"


def test_a_mapped_node_lets_a_peer_without_a_mapping_send_first() -> None:
    """Its probe to the peer's public endpoint would make a flow in its NAT that the peer's probe to
    the forwarded port then joins (answered from the flow's random port): it waits for that probe
    for a burst's first rounds, and probes the rest only after them."""
    core, key = core_with_peer(RANDOM, NatProfile())
    core.punching.set_mapped(True)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.0)
    assert probe_targets(core) == [LAN_EP]
    core.socket_for.heard(PUBLIC_EP, None)
    core.handle_timer(0.2)
    assert probe_targets(core) == [LAN_EP, PUBLIC_EP], "heard through the forward: its flow is the mapping's"
    core2, key2 = core_with_peer(RANDOM, NatProfile())
    core2.punching.set_mapped(True)
    core2.coord_message(m.Punch(key2, (PEER_PUBLIC, PEER_LAN)), 0.0)
    rounds = [probe_targets(core2)]
    while len(rounds) < 6:
        core2.handle_timer(core2.get_timer())
        rounds.append(probe_targets(core2))
    assert rounds[:5] == [[LAN_EP]] * 5 and rounds[5] == [LAN_EP, PUBLIC_EP], "the forward may not work"


def test_a_mapped_node_probes_a_mapped_peer_everywhere_at_once() -> None:
    core, key = core_with_peer(RANDOM, NatProfile())
    core.punching.set_mapped(True)
    mapped = m.Endpoint("198.51.100.2", 50000)
    info = m.PeerInfo(key, "bob", "100.64.0.2", True, (PEER_LAN,), PEER_PUBLIC, nat=nat_info(RANDOM),
                      mapped_endpoint=mapped)
    core.coord_message(m.PeerMap((info,)), 0.0)
    core.coord_message(m.Punch(key, (PEER_PUBLIC, PEER_LAN)), 0.1)
    assert set(probe_targets(core)) == {LAN_EP, PUBLIC_EP, Endpoint("198.51.100.2", 50000)}


def test_a_direct_path_lets_the_shell_close_that_peer_s_birthday_sockets() -> None:
    """The node says so (`CloseMappings`), so the socket limit is free for the next peer's campaign."""
    from meshvpn.node import events as ev
    from meshvpn.sim.nodes import alice_and_bob, ip_packet

    alice, bob, wire = alice_and_bob(random.Random)
    alice.send(ip_packet(alice.address, bob.address, b"hi"), 0.0)
    wire.pump(0.0)
    bob.send(ip_packet(bob.address, alice.address, b"back"), 0.1)
    wire.pump(0.1)
    closes = [e.peer_key for e in bob.take_events() if isinstance(e, ev.CloseMappings)]
    assert closes == [alice.public]
