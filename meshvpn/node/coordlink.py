"""The node's control channel to the coord: connect, register, keep alive, reconnect, fail over.

The link is a :mod:`meshvpn.node.coordclient` connection (a :mod:`meshvpn.channel` stream over
TCP, or inside TLS to the coord's ``tls_port``, raced a stagger after the plain addresses;
the coord's key is pinned from the config).  The first message is ``register``; after
that every message is handed to ``on_message``.  The link pings every ``keepalive`` seconds
and answers the coord's pings; silence beyond :func:`meshvpn.node.coorddial.silence_limit`
means the coord is gone; when the host's network comes back under the connection, the link
checks that it carries again (:mod:`meshvpn.node.tcpresume`).  Losing the coord never stops
the node: the data path keeps running, peers are kept, and the link tries the coord's addresses
again (several instances, or a name with several addresses) in the order and with the jittered,
capped backoff that :mod:`meshvpn.node.coorddial` decides, until it is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from typing import Awaitable, Callable, Optional, Sequence

from meshvpn.config import Address
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordClient, CoordHandshakeFailed, CoordUnreachable, connect
from meshvpn.errors import MeshError
from meshvpn.noise import StaticIdentity
from meshvpn.node.coordbacklog import PunchBacklog
from meshvpn.node.coorddial import BACKOFF_MAX, CONNECT_TIMEOUT, KEEPALIVE, Dialer, backoff_delay, silence_limit
from meshvpn.node.tcpresume import TcpResume, Ping, Reconnect
from meshvpn.node.family import is_ipv6
from meshvpn.node.startup import explain_coord_failure
from meshvpn.node.streamrace import race_connections
from meshvpn.node.tcpinfo import retransmitting
from meshvpn.timers import DeadlineTimer
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node.coordlink")

__all__ = ["BACKOFF_MAX", "CONNECT_TIMEOUT", "CoordLink", "backoff_delay", "resolve"]

CLOSE_POLL = 0.1
"""Seconds between cancels of the link's task while it is being closed."""


GetAddrInfo = Callable[..., Awaitable[list]]
"""The resolver: the loop's ``getaddrinfo``, which runs the system's in the loop's executor."""


async def resolve(address: Address, family: int = socket.AF_UNSPEC,
                  getaddrinfo: Optional[GetAddrInfo] = None) -> list[Endpoint]:
    """The IP addresses behind one configured coord address, in the resolver's order (both
    families unless `family` says one: a name with only AAAA records is a coord too)."""
    try:
        ipaddress.ip_address(address.host)
        return [Endpoint(address.host, address.port)]
    except ValueError:
        pass
    try:
        infos = await (getaddrinfo or asyncio.get_running_loop().getaddrinfo)(
            address.host, address.port, family=family, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CoordUnreachable(address.host, address.port, exc.strerror or str(exc), unresolved=True) from None
    found: list[Endpoint] = []
    for *_, sockaddr in infos:
        endpoint = Endpoint(sockaddr[0], sockaddr[1])
        if endpoint not in found:
            found.append(endpoint)
    return found


class _Refused(Exception):
    """The coord answered `error` and closed the channel: it is there but does not take us now."""


class CoordLink:
    """Keeps one registered control channel to one of the coord's addresses while the node runs."""

    def __init__(
        self,
        addresses: Sequence[Address],
        server_public: bytes,
        identity: StaticIdentity,
        register: Callable[[], m.Register],
        on_message: Callable[[m.Message], None],
        on_state: Callable[[bool], None],
        keepalive: float = KEEPALIVE,
        local_socket: Optional[Callable[[], socket.socket]] = None,
        family: int = socket.AF_UNSPEC,
        tls_port: int = 0,
        getaddrinfo: Optional[GetAddrInfo] = None,
    ) -> None:
        self.addresses = tuple(addresses)
        """The configured coord addresses, in order of preference (names resolved per round)."""
        self.tls_port = tls_port
        """The coord's TLS port on the same hosts (0: none): each round ends with them, over TLS."""
        self._tls: set[Endpoint] = set()
        """This round's endpoints that are TLS listeners."""
        self.family = family
        """The families a coord name is looked up in: both by default, the attempts racing."""
        self.getaddrinfo = getaddrinfo
        """The resolver; None: the loop's."""
        self.local_socket = local_socket
        """Makes the socket each connection comes from (the node's TCP punch port); None: any."""
        self.server_public = server_public
        self.identity = identity
        self.register = register
        """Builds the register message at connect time (endpoints may have changed)."""
        self.on_message = on_message
        self.on_state = on_state
        """Called with True once registered frames flow, False when the link drops (or the first attempt fails)."""
        self.keepalive = keepalive
        self.connected = False
        self.endpoint: Optional[Endpoint] = None
        """The coord address the link is registered through, while it is."""
        self.registered_at: Optional[float] = None
        """When the current connection registered (the loop's clock), while it is."""
        self._tried = False
        self._warned: dict[tuple, str] = {}
        """The last failure logged per address, so that a retry for the same reason stays quiet."""
        self._client: Optional[CoordClient] = None
        self._task: Optional[asyncio.Task] = None
        self._rng = random.Random()
        self.dialer = Dialer(spread=self._rng.random())
        self.backlog = PunchBacklog()
        """Punch requests that found the link down, sent once it registers."""
        self.resume = TcpResume()
        """The check of the connection once the network is back."""
        self._resume_timer: Optional[DeadlineTimer] = None

    @property
    def failures(self) -> int:
        """Rounds in a row that reached no coord (0 once registered)."""
        return self.dialer.failures

    @property
    def host(self) -> Optional[str]:
        """The host of the coord instance in use, whose STUN service the node asks; None while unregistered."""
        return None if self.endpoint is None else self.endpoint.host

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the link.  The cancel is repeated until it takes: ``asyncio.wait_for`` (3.11) drops
        a cancel that arrives as its awaitable completes, and the link would carry on."""
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CLOSE_POLL)
        if not task.cancelled() and task.exception() is not None:
            log.warning("coord link ended with %r", task.exception())
        self._drop()

    @property
    def local_endpoint(self) -> Optional[tuple]:
        """Our end of the connection (the socket's name); None while there is no connection."""
        return None if self._client is None else self._client.transport.get_extra_info("sockname") or None

    @property
    def local_address(self) -> Optional[str]:
        """The address our end of the connection has; None while there is no connection."""
        sockname = self.local_endpoint
        return None if not sockname else sockname[0]

    def reconnect(self) -> None:
        """Drop the connection and start a round now, with no backoff (the host's network changed)."""
        if self._task is not None:
            asyncio.get_running_loop().create_task(self._restart(self._task))

    async def _restart(self, task: asyncio.Task) -> None:
        while not task.done():  # as in close: a cancel may not take at once
            task.cancel()
            await asyncio.wait([task], timeout=CLOSE_POLL)
        if self._task is task:  # not closed (or restarted) meanwhile
            self._drop()
            self.dialer.failures = 0
            self._task = asyncio.get_running_loop().create_task(self._run())

    def network_back(self) -> bool:
        """The host's network is usable again under the registered connection (`NetworkChanged.resumed`):
        check that it carries, rather than wait for TCP's backed-off retransmission; whether the
        link reconnects at once."""
        if not self.connected or self._client is None:
            return False
        sock = self._client.transport.get_extra_info("socket")
        self.resume.resumed(asyncio.get_running_loop().time(), retransmitting(sock))
        return self._follow_resume()

    def _follow_resume(self) -> bool:
        """Carry out the check's actions and keep its one timer; whether the link reconnects."""
        reconnecting = False
        for action in self.resume.next_actions():
            if isinstance(action, Ping) and self._client is not None and self._client.close_reason is None:
                self._client.ping()
            elif isinstance(action, Reconnect):
                log.info("coord link: reconnecting now, %s", action.reason)
                self.reconnect()
                reconnecting = True
        if self._resume_timer is None:
            self._resume_timer = DeadlineTimer(asyncio.get_running_loop(), self._on_resume_timer)
        self._resume_timer.follow(self.resume.get_timer())
        return reconnecting

    def _on_resume_timer(self) -> None:
        self.resume.handle_timer(asyncio.get_running_loop().time())
        self._follow_resume()

    def send(self, msg: m.Message) -> bool:
        """Send if connected; False (dropped) otherwise: state is re-sent on reconnect, and a punch
        request waits in the backlog for the registration."""
        if self._client is None or self._client.close_reason is not None:
            self.backlog.hold(msg, asyncio.get_running_loop().time())
            return False
        self._client.send(msg)
        return True

    async def _run(self) -> None:
        while True:
            delay = await self._round()
            log.debug("reconnecting to the coord in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _round(self) -> float:
        """Race the coord's addresses in the dialer's order; the wait before the next round."""
        groups = []
        for address in self.addresses:
            try:
                groups.append(await resolve(address, self.family, self.getaddrinfo))
            except CoordUnreachable as exc:
                self._warn(address, explain_coord_failure(address, exc))
        if self.tls_port:
            tls_groups = [[Endpoint(endpoint.host, self.tls_port) for endpoint in group] for group in groups]
            self._tls = {endpoint for group in tls_groups for endpoint in group}
            groups += tls_groups
        order = self.dialer.plan(groups)
        log.debug("racing for the coord at %s", ", ".join(str(Address(*endpoint)) for endpoint in order) or "nothing")
        delay: Optional[float] = None
        while delay is None and (won := await self._race()) is not None:
            delay = await self._attempt(*won)
        if delay is None:
            delay = self.dialer.unreachable(self._rng.random()) or 0.0
        if not self._tried:
            self._tried = True
            self.on_state(False)
        return delay

    async def _race(self) -> Optional[tuple[CoordClient, Endpoint]]:
        """Connections to the round's next addresses, a stagger apart (`meshvpn.node.streamrace`):
        the first to finish the channel handshake, the others closed; None when all failed."""
        return await race_connections(self.dialer.next_endpoint, lambda: self.dialer.remaining > 0, self._connect,
                                      lambda client: client.abort(), self._failed)

    async def _connect(self, endpoint: Endpoint) -> CoordClient:
        sock = None if self.local_socket is None or is_ipv6(endpoint) else self.local_socket()
        return await connect(endpoint, self.server_public, self.identity, keepalive=self.keepalive,
                             timeout=CONNECT_TIMEOUT, sock=sock, tls=endpoint in self._tls)

    def _failed(self, endpoint: Endpoint, exc: BaseException) -> None:
        """One attempt of a race failed: say why (once per reason)."""
        if isinstance(exc, CoordHandshakeFailed):
            self.dialer.unanswered()
        if not isinstance(exc, (OSError, asyncio.TimeoutError, MeshError)):
            raise exc
        self._warn(endpoint, explain_coord_failure(Address(*endpoint), exc))

    async def _attempt(self, client: CoordClient, endpoint: Endpoint) -> Optional[float]:
        """Register and serve over the race's winner; None to race the rest of the round, else the wait."""
        try:
            await self._session(client, endpoint)
        except asyncio.CancelledError:
            raise
        except _Refused:
            return self.dialer.refused(self._rng.random())
        except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
            self._warn(endpoint, explain_coord_failure(Address(*endpoint), exc))
        finally:
            since = self.registered_at
            registered = self._drop()
        if registered:
            lasted = asyncio.get_running_loop().time() - since if since is not None else 0.0
            return self.dialer.dropped(self._rng.random(), reset=client.reset, lasted=lasted)
        return self.dialer.unreachable(self._rng.random())

    def _warn(self, where: tuple, text: str) -> None:
        """Log why an address failed: a warning when the reason is new, then quietly while the
        link retries every few seconds for the same reason."""
        if self._warned.get(where) == text:
            log.debug("%s", text)
        else:
            self._warned[where] = text
            log.warning("%s", text)

    def _drop(self) -> bool:
        """Close the client, its socket at once (`CoordClient.abort`); whether it had registered."""
        if self._client is not None:
            self._client.abort()
        self._client = None
        self.resume.forget()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        was = self.connected
        if was:
            self.connected = False
            self.endpoint = self.registered_at = None
            self.on_state(False)
        return was

    async def _session(self, client: CoordClient, endpoint: Endpoint) -> None:
        self._client = client
        self.dialer.reached()
        client.send(self.register())
        refusal: Optional[m.Error] = None
        while True:
            try:
                msg = await client.recv(silence_limit(self.keepalive))
            except asyncio.TimeoutError:
                raise EOFError(f"coord silent for {silence_limit(self.keepalive):g} s") from None
            except MeshError:
                if refusal is not None and not self.connected:
                    raise _Refused(refusal.code) from None
                raise
            if isinstance(msg, m.Registered):
                self.dialer.registered(endpoint)
                self._warned.clear()
                if not self.connected:
                    self.connected, self.endpoint, self._tried = True, endpoint, True
                    self.registered_at = asyncio.get_running_loop().time()
                    log.info("registered through the coord at %s", Address(*endpoint))
                    for held in self.backlog.release(asyncio.get_running_loop().time()):
                        client.send(held)
                    self.on_state(True)
            elif isinstance(msg, m.Error):
                refusal = msg
            if isinstance(msg, m.Pong):
                self.resume.answered(asyncio.get_running_loop().time(), client.answered())
                self._follow_resume()
            else:
                self.on_message(msg)
