"""The daemon's asyncio side of TURN: a timer for `TurnLinks`, its datagrams on the node's socket.

`TurnLinks` decides everything (allocations, channels, routes); this shell sends its datagrams
from the node's one UDP socket, feeds it what TURN servers send, hands ChannelData to the data
path as RELAY envelopes, gives the core the TURN routes and tells the coord our relayed
addresses. The per-packet framing lives in the daemon's send path (`turnlink.frame_run`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from meshvpn.control import messages as m
from meshvpn.node.core import NodeCore
from meshvpn.node.turnlink import TurnLinks
from meshvpn.stun import is_stun
from meshvpn.turn import AllocationLost, AllocationReady, ChannelBound, is_channel_data
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node.turn")


class TurnShell:
    """TURN for one node daemon: wraps `TurnLinks` with the socket, a timer, the core and the coord."""

    def __init__(
        self,
        links: TurnLinks,
        core: NodeCore,
        sendto: Callable[[bytes, Endpoint], None],
        inbound: Callable[[list[tuple[bytes, Endpoint]]], None],
        after_core: Callable[[], None],
        coord_send: Callable[[m.Message], None],
        clock: Callable[[], float],
    ) -> None:
        self.links = links
        self._core = core
        self._sendto = sendto
        self._inbound = inbound
        self._after_core = after_core
        self._coord_send = coord_send
        self._clock = clock
        self._timer: Optional[asyncio.TimerHandle] = None

    def coord_message(self, msg: m.Message) -> None:
        self.links.coord_message(msg, self._clock())
        self.flush()

    def datagram_received(self, data: bytes, src: Endpoint) -> bool:
        """ChannelData or STUN from one of our TURN servers; False for anything else (the RELAY
        envelopes `unwrap` made from ChannelData come back here on their way to the core)."""
        if src not in self.links.by_endpoint:
            return False
        if is_channel_data(data):
            envelope = self.links.unwrap(data, src)
            if envelope is not None:
                self._inbound([(envelope, src)])
            return True
        if is_stun(data):
            self.links.receive(data, src, self._clock())
            self.flush()
            return True
        return False

    def receive_run(self, buf: bytearray, nbytes: int, seg_size: int, src: Endpoint) -> None:
        """One receive from a TURN server (``seg_size`` each, the last may be shorter)."""
        for at in range(0, nbytes, seg_size):
            self.datagram_received(bytes(buf[at:min(at + seg_size, nbytes)]), src)

    def annotate(self, status: dict) -> None:
        """Add our allocations to ``meshvpn status`` and name the TURN server of TURN-routed peers."""
        status["self"]["turn"] = self.links.status()
        names = {peer.name: self.links.server_for(peer.route.endpoint) for peer in self._core.peers
                 if peer.route is not None}
        for entry in status["peers"]:
            if names.get(entry["name"]):
                entry["turn"] = names[entry["name"]]

    def close(self) -> None:
        """Give the allocations back (one datagram each) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.links.close(self._clock())
        for dst, data in self.links.datagrams_to_send():
            self._sendto(data, dst)

    def flush(self) -> None:
        """Send what the links produced, pass on routes, relayed addresses and log events, re-arm."""
        links = self.links
        for dst, data in links.datagrams_to_send():
            self._sendto(data, dst)
        received = links.received()
        if received:
            self._inbound(received)
        for name, event in links.events():
            if isinstance(event, AllocationReady):
                log.info("turn %s: allocated %s:%d", name, *event.relayed, extra={"RELAY": name})
            elif isinstance(event, AllocationLost):
                log.warning("turn %s: no allocation: %s", name, event.reason, extra={"RELAY": name})
            elif isinstance(event, ChannelBound):
                log.debug("turn %s: channel %#06x to %s:%d", name, event.channel, *event.peer, extra={"RELAY": name})
        if links.routes_changed():
            self._core.set_turn(dict(links.routes), self._clock())
            self._after_core()
        if links.relayed_changed():
            self._coord_send(m.TurnRelayed(links.relayed))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = links.get_timer()
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.links.handle_timer(self._clock())
        self.flush()
