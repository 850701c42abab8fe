"""The extra UDP sockets of birthday probing: each opens one NAT mapping towards a peer.

Behind a NAT that gives every new destination a random port, the peer can only find us if we
hold many mappings towards it at once (`meshvpn.node.prediction`). The core says when
(`OpenMappings`); this shell opens up to `limit` sockets, sends one probe from each, reads
them for the window and then closes every one that no path uses. A socket whose mapping the
peer hit stays: the core pinned the peer's endpoint to it (`NodeCore.socket_for`), so the
peer's traffic keeps leaving from the mapping its NAT lets through. A pinned socket then carries
the pair's whole data path, so it batches as the main socket does: GRO receives handed over as
runs, GSO sends of whole runs (`meshvpn.udpbatch`). All of them receive into one area: they are
read one after the other on the loop, and a campaign opens up to 256 of them (a 64 KiB area each
was 16 MiB of the daemon's resident set while a campaign ran).

With the native thread (`meshvpn.node.datapath.native_loop`) the sockets a current path is pinned to
are handed over to it (`hand_over`): it receives and sends on them as on the main socket, and the
loop stops reading them until they are handed back; whatever the thread does not open comes back
through `received`. Before a socket the thread serves is closed, it is handed back.

Behind a sequential NAT the port sample comes from one of these sockets too (`sample`), and the
core punches from it: its next mapping, towards the peer, is the one right above the sample.
Each socket is kept at least for the window it was opened for (`keep`), so one campaign's prune
does not close another's sockets; at each window's end the sockets no path uses (`in_use`) close.
The sockets of one campaign belong to its peer (`owner`): once that peer has a direct path, the
core says so (`CloseMappings`) and the campaign's window ends `grace` seconds later (`release`),
so the `limit` is free for the next peer's campaign rather than held for the rest of the window.
The grace lets the peer's probes already on their way to our other mappings still be answered:
its side of the path may hang on one of those (closing them at once left such pairs relayed
until the path finder's silence check, about 2 s).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from typing import Callable, Iterable, Optional, Sequence

from meshvpn.stun_codec import is_stun
from meshvpn.stunio import StunClient
from meshvpn.udpbatch import BatchUdpSocket, bind_udp
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node")

LIMIT = 256
"""Extra sockets open at once, whatever the core asks (the native thread serves as many: MAX_PINS)."""
RELEASE_GRACE = 1.0
"""Seconds a campaign's sockets stay after its peer has a direct path (`release`)."""
READS = 16
"""Receives (each one datagram, or a GRO run of them) per readiness callback."""
RECEIVE_AREA = 65535
"""Bytes of the one area all the sockets receive into: the largest GRO run or datagram."""

OnRun = Callable[[int, memoryview, int, Endpoint], None]
"""(socket id, the datagrams back to back, their size (the last may be shorter), source)."""
Pin = Callable[[list[tuple[int, int]]], Sequence[int]]
"""The native thread's ``Loop.pin``: (socket id, descriptor) of every socket it should serve → the ids it serves."""


class MappingSockets:
    """Extra sockets by id; `on_run(id, run, seg_size, src)` gets everything they receive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bind_address: str, on_run: OnRun,
                 buffer: int, limit: int = LIMIT, in_use: Callable[[], set[int]] = set,
                 grace: float = RELEASE_GRACE) -> None:
        self._loop = loop
        self._grace = grace
        self._in_use = in_use
        """The sockets some path uses (the node's `mappings_in_use`): what a window's end keeps."""
        self._buffer = buffer
        """SO_RCVBUF and SO_SNDBUF of each socket, as the main socket's: a pinned socket carries a peer's data."""
        self._bind = bind_address
        self._on_run = on_run
        self._limit = limit
        self._ids = itertools.count(1)
        self._socks: dict[int, BatchUdpSocket] = {}
        self._until: dict[int, float] = {}
        """When each socket's window ends: `keep_only` closes none before."""
        self._owner: dict[int, bytes] = {}
        """The peer whose campaign opened each socket (`release`)."""
        self._stun: dict[int, StunClient] = {}
        """Sockets waiting for a STUN answer (`sample`)."""
        self._area = bytearray(RECEIVE_AREA)
        """What every socket receives into: `on_run` consumes a run before the next receive."""
        self._pin: Optional[Pin] = None
        self._wanted: list[int] = []
        """The sockets last handed over to the native thread (`hand_over`)."""
        self._served: set[int] = set()
        """The sockets the native thread serves: the loop does not read them."""

    def __len__(self) -> int:
        return len(self._socks)

    def open(self, probes: Iterable[bytes], endpoint: Endpoint, keep: float = 0.0, owner: bytes = b"") -> int:
        """Send each probe to `endpoint` from a new socket kept `keep` seconds; how many were opened."""
        opened = 0
        for probe in probes:
            try:
                sid = self._open_one(keep)
                if sid is None:
                    break
                self._owner[sid] = owner
                self._socks[sid].sock.sendto(probe, endpoint)
            except OSError as exc:
                log.info("birthday probing: %d sockets, then %s", opened, exc)
                break
            opened += 1
        self._loop.call_later(keep, self.prune)
        return opened

    async def sample(self, server: Endpoint, timeout: float, keep: float) -> Optional[tuple[int, Endpoint]]:
        """A STUN binding from a new socket kept `keep` seconds: its id and mapped endpoint (None: no socket).
        Raises what `StunClient.query` raises, and TimeoutError after `timeout`."""
        sid = self._open_one(keep)
        if sid is None:
            return None
        self._loop.call_later(keep, self.prune)
        self._stun[sid] = client = StunClient(_Sender(self, sid))
        try:
            result = await asyncio.wait_for(client.query(server), timeout)
        finally:
            self._stun.pop(sid, None)
        return sid, Endpoint(*result.mapped)

    def _open_one(self, keep: float) -> Optional[int]:
        """A new socket read by `_readable`; None past the limit. Raises OSError."""
        if len(self._socks) >= self._limit:
            return None
        sock = bind_udp(self._bind, 0, self._buffer)
        sid = next(self._ids)
        self._socks[sid] = BatchUdpSocket(sock, buffer=self._area)
        self._until[sid] = self._loop.time() + keep
        self._loop.add_reader(sock.fileno(), self._readable, sid)
        return sid

    def sendto(self, sid: int, data: bytes, dst: Endpoint) -> bool:
        """Send from extra socket `sid`; False if it is gone."""
        udp = self._socks.get(sid)
        if udp is None:
            return False
        try:
            udp.sock.sendto(data, dst)
        except OSError:
            pass
        return True

    def send_run(self, sid: int, dst: Endpoint, run: memoryview, seg_size: int) -> bool:
        """Send a run of datagrams (``seg_size`` each, the last may be shorter) from `sid` in one
        GSO send; False if the socket is gone."""
        udp = self._socks.get(sid)
        if udp is None:
            return False
        udp.send_contiguous(dst, run, seg_size)
        return True

    def sockets(self) -> dict[int, socket.socket]:
        """The open sockets by id (for their kernel counters)."""
        return {sid: udp.sock for sid, udp in self._socks.items()}

    def hand_over(self, pin: Pin, sids: Iterable[int]) -> None:
        """The native thread (its ``Loop.pin``) serves the open sockets of `sids`, the loop reads the others.

        Called after every sync of the thread with the sockets the current paths are pinned to; it
        costs a sort of those few ids when nothing changed."""
        wanted = sorted(sid for sid in sids if sid in self._socks and sid not in self._stun)
        if wanted == self._wanted and pin == self._pin:
            return
        try:
            served = set(pin([(sid, self._socks[sid].sock.fileno()) for sid in wanted]))
        except OSError as exc:  # no descriptor for the thread's copy: it keeps what it served, tried again on a change
            log.warning("pinned sockets %s not handed to the native thread: %s", wanted, exc)
            self._wanted = wanted
            return
        for sid in self._served - served:
            if sid in self._socks:
                self._loop.add_reader(self._socks[sid].sock.fileno(), self._readable, sid)
        for sid in served - self._served:
            self._loop.remove_reader(self._socks[sid].sock.fileno())
        self._pin, self._wanted, self._served = pin, wanted, served

    def received(self, sid: int, run: memoryview, seg_size: int, source: Endpoint) -> None:
        """Datagrams the native thread received on socket `sid` and left to Python, as `_readable` hands them on."""
        client = self._stun.get(sid)
        if client is not None and len(run) and is_stun(bytes(run[:seg_size])):
            client.datagram_received(bytes(run[:seg_size]), source)
        elif len(run) and sid in self._socks:
            self._on_run(sid, run, seg_size, source)

    def keep_only(self, in_use: set[int], everything: bool = False) -> None:
        """Close every socket not in `in_use` whose window is over (`everything`: whatever its window)."""
        now = self._loop.time()
        closing = [sid for sid in self._socks if sid not in in_use and (everything or self._until.get(sid, now) <= now)]
        if self._pin is not None and self._served.intersection(closing):  # the thread lets go of them first
            self.hand_over(self._pin, [sid for sid in self._wanted if sid not in closing])
        for sid in closing:
            self._until.pop(sid, None)
            self._owner.pop(sid, None)
            sock = self._socks.pop(sid).sock
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        self.keep_only(set(), everything=True)

    def release(self, owner: bytes) -> None:
        """`owner` has a direct path: its campaign's window ends `grace` seconds from now, if not before."""
        end = self._loop.time() + self._grace
        for sid in [sid for sid, who in self._owner.items() if who == owner]:
            self._until[sid] = min(self._until.get(sid, end), end)
        self._loop.call_later(self._grace, self.prune)

    def prune(self) -> None:
        """Close the sockets no path uses whose windows are over (at the end of each window, and each refresh)."""
        self.keep_only(self._in_use())

    def _readable(self, sid: int) -> None:
        udp = self._socks.get(sid)
        for _ in range(READS if udp is not None else 0):
            try:
                source, nbytes, seg_size = udp.recv_into()
            except OSError:
                return
            self.received(sid, memoryview(udp.buffer)[:nbytes], seg_size, Endpoint(source[0], source[1]))


class _Sender:
    """What `StunClient` sends through: one extra socket."""

    def __init__(self, sockets: MappingSockets, sid: int) -> None:
        self._sockets, self._sid = sockets, sid

    def sendto(self, data: bytes, addr: Endpoint) -> None:
        self._sockets.sendto(self._sid, data, addr)
