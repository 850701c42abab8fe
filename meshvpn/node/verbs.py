"""The daemon's answers on its local control socket: ``status``, ``peers`` and ``ping`` (see :mod:`meshvpn.node.ctl`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from meshvpn.config import Address
from meshvpn.node.datapath.fastpath import DATA_PATH
from meshvpn.node import events as ev
from meshvpn.node.sockstats import namespace_udp_errors, socket_report
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.node.daemon import NodeDaemon

PING_INTERVAL = 0.5
PING_WAIT = 2.0


class ControlVerbs:
    """What ``meshvpn status``, ``peers`` and ``ping`` ask the running daemon; answers are streamed dicts."""

    def __init__(self, daemon: NodeDaemon) -> None:
        self.daemon = daemon
        self._waiters: dict[bytes, asyncio.Future] = {}

    def ping_replied(self, reply: ev.PingReply) -> None:
        """The node's answer to one of our probes: wake the ``ping`` waiting for it."""
        waiter = self._waiters.pop(reply.tx_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fold_native(self) -> None:
        """Fold the native thread's counts and receives in now: an answer must not be a timer behind."""
        daemon = self.daemon
        if daemon.native is not None:
            daemon.native.pull(daemon.loop.time())
            daemon.transmit()

    async def handle_control(self, request: dict) -> AsyncIterator[dict]:
        cmd = request.get("cmd")
        if cmd == "status":
            daemon = self.daemon
            self._fold_native()
            status = daemon.node.status(daemon.loop.time())
            status["self"]["coord"] = "connected" if daemon.link and daemon.link.connected else "disconnected"
            endpoint = daemon.link.endpoint if daemon.link else None
            status["self"]["coord_address"] = None if endpoint is None else str(Address(*endpoint))
            status["self"]["drops"] = dict(daemon.node.drops + daemon.data.drops)
            status["self"]["endpoints"] = [str(e) for e in daemon.local]
            status["self"]["public_endpoint"] = str(daemon.public_endpoint) if daemon.public_endpoint else None
            status["self"]["ipv6_endpoints"] = [str(e) for e in daemon.ipv6]
            status["self"]["port_mapping"] = daemon.portmap.status()
            status["self"]["tcp_punch"]["listen"] = daemon.punch.listen_text()
            status["self"]["data_path"] = DATA_PATH
            if daemon.native is not None:
                status["self"]["native_loop"] = dict(daemon.native.totals)
            status["self"]["dns"] = daemon.dns.status()
            status["self"]["sockets"] = socket_report(daemon.udp_sockets())
            status["self"]["udp_errors"] = namespace_udp_errors()
            yield {**status, "done": True}
        elif cmd == "peers":
            self._fold_native()
            yield {"peers": [_peer_map_entry(peer) for peer in self.daemon.node.peers], "done": True}
        elif cmd == "ping":
            async for reply in self._ping(request):
                yield reply
        else:
            yield {"error": f"unknown command {cmd!r}", "done": True}

    async def _ping(self, request: dict) -> AsyncIterator[dict]:
        peer = self.daemon.node.peers.find(str(request.get("peer", "")))
        if peer is None:
            yield {"error": f"no peer named {request.get('peer')!r}", "done": True}
            return
        count = request.get("count", 4)
        count = count if isinstance(count, int) and 0 < count <= 1000 else 4
        last_path = peer.route.path.kind.value if peer.route else "-"
        for seq in range(count):
            tx_id = self.daemon.node.ping(peer, self.daemon.loop.time())
            waiter = self.daemon.loop.create_future()
            if tx_id is not None:
                self._waiters[tx_id] = waiter
            self.daemon.transmit()
            try:
                reply: ev.PingReply = await asyncio.wait_for(waiter, PING_WAIT)
            except asyncio.TimeoutError:
                self._waiters.pop(tx_id, None)
                yield {"type": "timeout", "name": peer.name, "seq": seq}
            else:
                if reply.path != last_path:
                    yield {"type": "path", "name": peer.name, "old": last_path, "new": reply.path}
                    last_path = reply.path
                yield {
                    "type": "pong", "seq": seq, "name": reply.name, "overlay": reply.address, "path": reply.path,
                    "endpoint": str(Endpoint(reply.endpoint[0], reply.endpoint[1])), "rtt_ms": reply.rtt * 1000,
                }
            if seq + 1 < count:
                await asyncio.sleep(PING_INTERVAL)
        yield {"done": True}


def _peer_map_entry(peer) -> dict:
    info = peer.info
    endpoints = [str(e) for e in info.local_endpoints]
    if info.public_endpoint is not None:
        endpoints.append(str(info.public_endpoint))
    if info.mapped_endpoint is not None:
        endpoints.append(f"{info.mapped_endpoint} (mapped)")
    if info.mapped_tcp is not None:
        endpoints.append(f"{info.mapped_tcp} (mapped tcp)")
    endpoints += [f"{e} (ipv6)" for e in info.ipv6_endpoints or ()]
    return {"name": peer.name, "overlay": peer.address, "key": peer.key_text, "online": info.online,
            "endpoints": endpoints, "peer_relay": bool(info.peer_relay)}
