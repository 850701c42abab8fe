"""The lookups bench installs the table it claims to search and times both sides."""

import pytest

from meshvpn.bench.lookups import FLOWS, Rig, measure
from meshvpn.node.datapath import fastpath

pytestmark = pytest.mark.needs(fastpath.native_module() is None, "meshvpn._fastpath was not built (make setup builds it)")


def test_the_table_holds_every_peer_and_the_packets_go_to_many():
    rig = Rig(300, 2 * FLOWS)
    try:
        indexes, overlays = rig.loop.installed()
        assert len(set(indexes)) == len(set(overlays)) == 300
        assert len({message[4:8] for message in rig.messages}) == FLOWS, "one receiver index per flow"
        assert len({read[10 + 16 : 10 + 20] for read in rig.reads}) == FLOWS, "one destination per flow"
    finally:
        rig.close()


def test_every_packet_is_opened_and_sealed_in_a_round():
    row = measure(100, 200, 1)
    assert set(row) == {"open", "seal"} and all(value > 0 for value in row.values())
