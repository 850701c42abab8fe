"""The native thread's tables per peer: an expired session leaves them though nothing marked its peer.

The random walk through a pair's life is in ``tests/sim/test_native_tables_sim.py``; here, the
expiry heap alone, with the core's marks taken away as its timers would take them.
"""

import pytest

from meshvpn.node.datapath.native_tables import NativeTables
from tests.unit.test_native_relay_rx import NATIVE_MODULE, receiving_plane

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")


def test_an_expired_session_leaves_the_tables_without_a_mark():
    peers = receiving_plane(0.0).core.peers
    session = peers.find("peer").ring.current
    tables = NativeTables(peers)
    assert tables.update(1.0)
    entries, by_index, _, _ = tables.tables()
    assert [row[0] for row in entries] == [22] and list(by_index) == [22]
    peers.touched.clear()
    assert not tables.update(session.expires_at - 1.0), "nothing marked, nothing expired: nothing to do"
    assert tables.update(session.expires_at), "expired: the rows go at once"
    assert tables.tables() == ([], {}, [], {})
