"""This node's peer relay in its native loop: members' envelopes forwarded without Python.

Why: a pair relayed through a LAN party's host paid Python's wake-up, dispatch and send per
envelope, while `meshvpn relay` forwards in a native thread. The node's native loop
(``meshvpn._fastpath.Loop``) already owns the receives of the main UDP socket, which the peer
relay shares; it carries the server relay's forwarder (``_fastpath_forward.c``, one piece of C
for both) and forwards the RELAY envelopes of the members registered with this node by
`RelayCore`'s rules: sender and destination registered on UDP endpoints, in one network, their
tokens good, the sender's bucket spent. Everything else (hellos, the node's own traffic) goes on
as before.

Python keeps every decision. :meth:`NativePeerRelay.sync`, run after every input with the
native loop's own, installs the relay core's registrations whenever they changed (a node
registered, moved or gone, a member removed, the node no longer relaying: then none), so a
registration ended in Python ends in the thread before the next datagram. The buckets are the
registrations' own ``NativeBucket`` objects, which both threads spend on the relay core's clock (the
node's monotonic clock plus its wall offset, which the thread adds too). :meth:`pull` folds what
the thread forwarded and dropped, and each member's ``last_heard``, into the relay core.
"""

from __future__ import annotations

from typing import Optional

from meshvpn.node.datapath import fastpath
from meshvpn.node.peerrelay import PeerRelay
from meshvpn.relay import native
from meshvpn.relay.core import RelayCore


class NativePeerRelay:
    """What a node's ``Loop`` may forward for its peer relay, and what it counted."""

    def __init__(self, loop, serving: PeerRelay) -> None:
        self._loop = loop
        self._serving = serving
        self._bucket = fastpath.native_module().NativeBucket
        serving.bucket = self._bucket
        self._core: Optional[RelayCore] = None
        """The relay core whose registrations are installed (None: none are)."""
        self._generation = -1

    def sync(self) -> None:
        """Install the relay core's registrations if they changed since the last call."""
        core = self._serving.core
        if core is self._core and (core is None or core.registry.generation == self._generation):
            return
        if core is not None and any(type(reg.bucket) is not self._bucket for reg in core.registry.by_key.values()):
            core = None  # a core from before the native loop: Python forwards for it
        rows = [] if core is None else native.registrations(core)
        heard = self._loop.relay_replace(rows, self._serving.wall_offset)
        if core is not None and core is self._core:
            native.fold_heard(core, heard)
        self._core, self._generation = core, -1 if core is None else core.registry.generation

    def pull(self) -> dict[str, int]:
        """Fold what the thread forwarded and dropped into the relay core; what it forwarded (`native.FORWARDED`)."""
        heard, forwarded, drops = self._loop.relay_counts()
        counts = dict(zip(native.FORWARDED, forwarded))
        if self._core is not None and self._core is self._serving.core:
            native.fold(self._core, heard, counts, drops)
        return counts
