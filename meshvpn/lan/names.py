"""Names for the mesh: the node answers DNS for its peers from the peer map.

A peer called bob in network party is `bob` and `bob.party.mesh` (the suffix is configurable);
reverse lookups of overlay addresses give the long name. Names under `NETWORK.SUFFIX` are ours:
an unknown one gets NXDOMAIN, a known one without the asked type gets an empty answer. Every
other name is refused, or handed back to the shell to forward when the node is set to. TTLs are
one second, so a renamed or moved peer is seen at once.

The wire format is dnslib's (it imports `socket` for its own client helpers, which this module
never calls). `respond` raises only `BadQuery`; replies are built from the question as asked.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import dnslib

from meshvpn.errors import RemoteProtocolError

TTL = 1
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
POINTER_CACHE = 1 << 15
"""Reverse names kept: a directory is rebuilt at every peer-map change, and a peer's overlay address
rarely changes, so each is worked out once (at 10,000 peers the rebuild was 90 % ``reverse_pointer``)."""


class BadQuery(RemoteProtocolError):
    """A datagram to the DNS responder is not a DNS query it can answer."""


class Host(NamedTuple):
    """A node's name and overlay addresses, as the peer map gives them."""

    name: str
    ipv4: str | None = None
    ipv6: str | None = None


@dataclass(frozen=True)
class Forward:
    """Send `query` to the configured upstream server and relay its answer unchanged."""

    query: bytes


class Directory:
    """Names → addresses for one network; rebuilt whenever the peer map changes."""

    def __init__(self, network: str, suffix: str, hosts: Iterable[Host]):
        self.zone = f"{network}.{suffix}".lower().strip(".")
        self._hosts: dict[str, Host] = {}
        self._pointers: dict[str, str] = {}
        for host in hosts:
            name = host.name.lower()
            if not _LABEL.fullmatch(name):
                continue
            self._hosts[name] = host
            for address in (host.ipv4, host.ipv6):
                if address:
                    self._pointers[reverse_pointer(address)] = f"{name}.{self.zone}."

    def owns(self, qname: str) -> bool:
        """Whether `qname` (no trailing dot, lower case) is one this responder answers for."""
        return qname in self._hosts or qname == self.zone or qname.endswith("." + self.zone) \
            or qname in self._pointers

    def host(self, qname: str) -> Host | None:
        short = qname.removesuffix("." + self.zone)
        return self._hosts.get(short) if "." not in short else None

    def pointer(self, qname: str) -> str | None:
        return self._pointers.get(qname)


@functools.lru_cache(maxsize=POINTER_CACHE)
def reverse_pointer(address: str) -> str:
    """The reverse-lookup name of an overlay address (``4.3.2.10.in-addr.arpa``); ValueError if it is none."""
    return ipaddress.ip_address(address).reverse_pointer


def respond(datagram: bytes, directory: Directory, forward: bool) -> bytes | Forward | None:
    """The reply to one query, a `Forward`, or None for a datagram that is not a query."""
    query = _parse(datagram)
    if query.header.qr:
        return None
    reply = query.reply(ra=0, aa=1)
    if query.header.opcode != dnslib.OPCODE.QUERY or len(query.questions) != 1:
        reply.header.aa = 0
        reply.header.rcode = dnslib.RCODE.NOTIMP if query.header.opcode != dnslib.OPCODE.QUERY else dnslib.RCODE.FORMERR
        return _pack(reply)
    question = query.questions[0]
    qname = str(question.qname).rstrip(".").lower()
    if not directory.owns(qname):
        if forward:
            return Forward(bytes(datagram))
        reply.header.aa = 0
        reply.header.rcode = dnslib.RCODE.REFUSED
        return _pack(reply)
    _answer(reply, question, qname, directory)
    return _pack(reply)


def _answer(reply: dnslib.DNSRecord, question: dnslib.DNSQuestion, qname: str, directory: Directory) -> None:
    qtype, any_type = question.qtype, dnslib.QTYPE.ANY
    pointer = directory.pointer(qname)
    if pointer is not None:
        if qtype in (dnslib.QTYPE.PTR, any_type):
            reply.add_answer(dnslib.RR(question.qname, dnslib.QTYPE.PTR, rdata=dnslib.PTR(pointer), ttl=TTL))
        return
    host = directory.host(qname)
    if host is None:
        if qname != directory.zone:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        return
    if host.ipv4 and qtype in (dnslib.QTYPE.A, any_type):
        reply.add_answer(dnslib.RR(question.qname, dnslib.QTYPE.A, rdata=dnslib.A(host.ipv4), ttl=TTL))
    if host.ipv6 and qtype in (dnslib.QTYPE.AAAA, any_type):
        reply.add_answer(dnslib.RR(question.qname, dnslib.QTYPE.AAAA, rdata=dnslib.AAAA(host.ipv6), ttl=TTL))


def _parse(datagram: bytes) -> dnslib.DNSRecord:
    try:
        return dnslib.DNSRecord.parse(datagram)
    except (dnslib.DNSError, dnslib.BufferError, dnslib.DNSLabelError, ValueError, IndexError, UnicodeError,
            TypeError, KeyError) as exc:
        raise BadQuery(f"not a DNS message: {exc}"[:200]) from None


def _pack(reply: dnslib.DNSRecord) -> bytes:
    try:
        return bytes(reply.pack())
    except (dnslib.DNSError, dnslib.BufferError, dnslib.DNSLabelError, ValueError, UnicodeError) as exc:
        raise BadQuery(f"cannot answer that question: {exc}"[:200]) from None
