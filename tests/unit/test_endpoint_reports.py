"""The endpoint rounds' rules (`meshvpn.node.endpointreports`), on a fake clock: what is reported
at once, when the peers are asked to punch again, and what waits for the coord link."""

from meshvpn.control import messages as m
from meshvpn.node.endpointreports import EndpointReports, OwnEndpoints, Refreshed, Report, ReportConfig, Reprobe

LAN = (m.Endpoint("10.1.0.11", 41641),)
LAN2 = (m.Endpoint("10.3.0.11", 41641),)
V6 = (m.Endpoint("2001:db8:1:1::a", 41641),)
V6_NEW = (m.Endpoint("2001:db8:1:1::b", 41641),)
PUBLIC = m.Endpoint("203.0.113.1", 41641)
PUBLIC2 = m.Endpoint("198.51.100.7", 1234)
MAPPED = m.Endpoint("203.0.113.1", 50000)
GRACE = ReportConfig().reprobe_grace


def running(now: float = 0.0) -> EndpointReports:
    """Rules whose first round reported LAN, IPv6 and public endpoints, coord link up."""
    reports = EndpointReports()
    reports.begin(now, local=LAN, ipv6=V6)
    reports.stun(PUBLIC, now + 0.05)
    reports.coord_up(now + 0.1)
    reports.outputs()
    return reports


def test_a_round_reports_what_the_host_knows_before_stun_answers_and_again_with_its_answer():
    reports = EndpointReports()
    reports.begin(0.0, local=LAN, ipv6=V6, mapped=MAPPED)
    assert reports.outputs() == [Report(OwnEndpoints(local=LAN, ipv6=V6, mapped=MAPPED))]
    reports.stun(PUBLIC, 0.04)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC, local=LAN, ipv6=V6, mapped=MAPPED))]


def test_stun_that_gives_up_keeps_the_public_endpoint_and_reports_nothing_new():
    reports = running()
    reports.begin(60.0, local=LAN, ipv6=V6)
    reports.stun(None, 65.0)
    assert reports.outputs() == []
    assert reports.known.public == PUBLIC


def test_nothing_changed_nothing_reported():
    reports = running()
    reports.begin(60.0, local=LAN, ipv6=V6)
    reports.stun(PUBLIC, 60.05)
    reports.learn(60.1, ipv6=V6)
    assert reports.outputs() == []


def test_after_a_network_change_the_peers_are_reprobed_when_stun_answers_within_the_grace():
    reports = running()
    reports.network_changed(True, 10.0)
    reports.begin(10.0, local=LAN2, ipv6=V6)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC, local=LAN2, ipv6=V6))]
    assert reports.get_timer() == 10.0 + GRACE
    reports.stun(PUBLIC2, 10.08)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC2, local=LAN2, ipv6=V6)), Reprobe(True)]
    assert reports.get_timer() is None


def test_without_a_stun_answer_the_peers_are_reprobed_at_the_end_of_the_grace_not_the_stun_timeout():
    reports = running()
    reports.network_changed(False, 10.0)
    reports.begin(10.0, local=LAN, ipv6=V6 + V6_NEW)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC, local=LAN, ipv6=V6 + V6_NEW))]
    reports.handle_timer(10.0 + GRACE - 0.01)
    assert reports.outputs() == []
    reports.handle_timer(10.0 + GRACE)
    assert reports.outputs() == [Reprobe(False)]
    reports.stun(None, 15.0)  # gave up: nothing moved, nobody is asked again
    assert reports.outputs() == []


def test_a_late_stun_answer_with_a_new_public_endpoint_asks_the_peers_once_more():
    reports = running()
    reports.network_changed(True, 10.0)
    reports.begin(10.0, local=LAN2, ipv6=V6)
    reports.handle_timer(10.0 + GRACE)
    assert reports.outputs()[-1] == Reprobe(True)
    reports.stun(PUBLIC2, 11.2)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC2, local=LAN2, ipv6=V6)), Reprobe(False)]
    reports.stun(PUBLIC2, 11.3)  # the round is over: a repeat asks nothing
    assert reports.outputs() == []


def test_a_late_stun_answer_while_the_coord_link_is_down_asks_once_it_is_back():
    reports = running()
    reports.network_changed(True, 10.0)
    reports.begin(10.0, local=LAN2, ipv6=V6)
    reports.handle_timer(10.0 + GRACE)
    assert reports.outputs()[-1] == Reprobe(True)
    reports.coord_down()
    reports.stun(PUBLIC2, 11.2)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC2, local=LAN2, ipv6=V6))]
    reports.coord_up(12.0)
    assert reports.outputs() == [Reprobe(False)]


def test_a_late_stun_answer_that_moved_nothing_asks_nothing():
    reports = running()
    reports.network_changed(False, 10.0)
    reports.begin(10.0, local=LAN, ipv6=V6)
    reports.handle_timer(10.0 + GRACE)
    assert reports.outputs() == [Reprobe(False)]
    reports.stun(PUBLIC, 11.2)
    assert reports.outputs() == []


def test_a_change_while_the_coord_link_is_down_reprobes_when_it_is_back():
    reports = running()
    reports.coord_down()
    reports.network_changed(True, 10.0)
    reports.begin(10.0, local=LAN2, ipv6=V6)
    reports.stun(PUBLIC2, 10.05)
    assert Reprobe(True) not in reports.outputs()
    assert reports.get_timer() is None
    reports.coord_up(11.0)
    assert reports.outputs() == [Reprobe(True)]


def test_the_link_back_before_stun_waits_for_the_grace_from_the_rounds_start():
    reports = running()
    reports.coord_down()
    reports.network_changed(True, 10.0)
    reports.begin(10.0, local=LAN2, ipv6=V6)
    reports.coord_up(10.2)
    assert Reprobe(True) not in reports.outputs()
    assert reports.get_timer() == 10.0 + GRACE
    reports.handle_timer(10.0 + GRACE)
    assert reports.outputs() == [Reprobe(True)]


def test_no_reprobe_before_the_new_round_reported_anything():
    reports = running()
    reports.network_changed(True, 10.0)
    reports.handle_timer(10.0 + GRACE)  # the round's task has not begun yet: nothing new to tell
    assert reports.outputs() == []
    reports.begin(10.0 + GRACE + 0.01, local=LAN2)
    assert reports.outputs()[-1] != Reprobe(True)
    reports.handle_timer(10.0 + 2 * GRACE + 0.01)
    assert reports.outputs() == [Reprobe(True)]


def test_a_new_ipv6_address_or_mapping_between_changes_asks_the_peers_to_punch_it():
    reports = running()
    reports.learn(20.0, ipv6=V6 + V6_NEW)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC, local=LAN, ipv6=V6 + V6_NEW)), Reprobe(False)]
    reports.learn(30.0, mapped=MAPPED)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC, local=LAN, ipv6=V6 + V6_NEW, mapped=MAPPED)),
                                 Reprobe(False)]


def test_losing_a_candidate_or_a_new_public_endpoint_or_nat_asks_the_peers_nothing():
    reports = running()
    reports.learn(20.0, ipv6=())
    reports.learn(21.0, nat=m.NatInfo(True, "preserving"))
    reports.begin(60.0, local=LAN, ipv6=())
    reports.stun(PUBLIC2, 60.05)
    assert not any(isinstance(out, Reprobe) for out in reports.outputs())


def test_the_first_report_is_not_news_to_peers_that_never_had_us():
    reports = EndpointReports()
    reports.coord_up(0.0)
    reports.begin(0.1, local=LAN, ipv6=V6)
    reports.stun(PUBLIC, 0.15)
    assert not any(isinstance(out, Reprobe) for out in reports.outputs())


def test_a_new_candidate_while_the_coord_link_is_down_is_punched_once_it_is_back():
    reports = running()
    reports.coord_down()
    reports.learn(20.0, ipv6=V6 + V6_NEW)
    assert not any(isinstance(out, Reprobe) for out in reports.outputs())
    reports.coord_up(25.0)
    assert reports.outputs() == [Reprobe(False)]


def test_new_candidates_in_a_changed_network_ask_once_with_the_change():
    reports = running()
    reports.network_changed(False, 10.0)
    reports.begin(10.0, local=LAN, ipv6=V6 + V6_NEW)
    reports.stun(PUBLIC, 10.05)
    assert [out for out in reports.outputs() if isinstance(out, Reprobe)] == [Reprobe(False)]


def test_an_asked_round_ends_with_refreshed_once_stun_answered_or_gave_up():
    reports = running()
    reports.ask()
    assert reports.asked
    reports.begin(30.0, local=LAN, ipv6=V6)
    assert reports.outputs() == []
    reports.stun(PUBLIC2, 30.05)
    assert reports.outputs() == [Report(OwnEndpoints(public=PUBLIC2, local=LAN, ipv6=V6)), Refreshed()]
    assert not reports.asked
    reports.ask()
    reports.begin(40.0, local=LAN, ipv6=V6)
    reports.stun(None, 45.0)
    assert reports.outputs() == [Refreshed()]
