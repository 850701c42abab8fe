"""Which socket datagrams to an endpoint leave from: what the network proved wins over a campaign's choice."""

from meshvpn.node.pins import MAX_HEARD_MAIN, SocketPins
from meshvpn.wire import Endpoint

PEER = Endpoint("198.51.100.2", 41641)
OTHER = Endpoint("198.51.100.2", 30001)


def test_nothing_pinned_means_the_main_socket() -> None:
    pins = SocketPins()
    assert pins.get(PEER) is None and not pins


def test_a_probing_pin_holds_until_the_endpoint_is_heard_on_another_socket() -> None:
    pins = SocketPins()
    pins.probing(PEER, 4)
    assert pins.get(PEER) == 4 and pins
    pins.heard(PEER, None)
    assert pins.get(PEER) is None, "its probe came in on the main socket: the answer leaves from there"
    pins.probing(PEER, 5)
    assert pins.get(PEER) is None, "a later campaign does not move it"
    pins.heard(PEER, 7)
    assert pins.get(PEER) == 7


def test_keep_only_forgets_the_other_endpoints_and_names_the_sockets_in_use() -> None:
    pins = SocketPins()
    pins.heard(PEER, 3)
    pins.probing(OTHER, 4)
    pins.heard(Endpoint("198.51.100.3", 1), None)
    assert pins.keep_only({PEER}) == {3}
    assert pins.get(OTHER) is None and pins.get(PEER) == 3


def test_clear_forgets_the_extra_sockets_but_not_what_the_main_socket_heard() -> None:
    pins = SocketPins()
    pins.heard(PEER, None)
    pins.heard(OTHER, 3)
    pins.clear()
    assert not pins and pins.get(OTHER) is None
    pins.probing(PEER, 9)
    assert pins.get(PEER) is None


def test_the_main_sockets_memory_is_bounded() -> None:
    pins = SocketPins()
    for port in range(MAX_HEARD_MAIN + 10):
        pins.heard(Endpoint("198.51.100.2", 1000 + port), None)
    pins.probing(Endpoint("198.51.100.2", 1000), 2)
    pins.probing(Endpoint("198.51.100.2", 1000 + MAX_HEARD_MAIN + 9), 2)
    assert pins.get(Endpoint("198.51.100.2", 1000)) == 2, "the oldest was forgotten"
    assert pins.get(Endpoint("198.51.100.2", 1000 + MAX_HEARD_MAIN + 9)) is None
