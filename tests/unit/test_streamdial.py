"""The spread of a stream's backoff redials (`meshvpn.node.streamdial`): a relay that went away is not
dialled again by all its nodes at the same instant; a redial at once after a reset is not spread."""

import random

import pytest

from meshvpn import keys
from meshvpn.control import messages as m
from meshvpn.node.relay.link import RelayLink
from meshvpn.node.streamdial import StreamDial
from test_relaylink import NODE, RELAY, WALL


def test_backoff_redials_are_spread_by_the_random_source_and_a_reset_redial_is_not():
    draws = iter([0.0, 0.999, 0.25])
    dial = StreamDial(None, draw=lambda: next(draws))
    dial.attempt()
    dial.down(1.0)
    assert dial.retry_at == pytest.approx(1.25), "0.5 s spread to its lowest, half of it"
    dial.attempt()
    dial.down(2.0)
    assert dial.retry_at == pytest.approx(2.0 + 1.0 * 1.499), "the doubled step spread to its highest"
    dial.attempt()
    dial.up(3.0)
    dial.down(10.0, reset=True)
    assert dial.retry_at == 10.0, "a stream the server reset after it lasted: at once, no draw spent"
    dial.attempt()
    dial.down(10.2)
    assert dial.retry_at == pytest.approx(10.2 + 0.5 * 0.75)


def test_a_relay_links_redials_draw_from_its_random_source():
    """10,000 nodes whose relay restarted do not all redial at the backoff's first step."""
    waits = set()
    for seed in range(8):
        info = m.RelayInfo("r1", "203.0.113.2", 7500, keys.public_key(RELAY))
        link = RelayLink(info, NODE, keys.public_key(NODE), random.Random(seed).randbytes, WALL)
        link.tcp_down(5.0)
        waits.add(link.stream.retry_at - 5.0)
    assert len(waits) == 8 and all(0.25 <= wait < 0.75 for wait in waits)
