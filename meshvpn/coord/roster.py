"""Every stored node in memory, kept in step with the store, so a join costs O(peers).

Reading a network's nodes from the store twice per join (names and addresses in use, then the
peer map) was most of a join's CPU at 1,000 nodes. The roster loads the nodes once, and every
write goes through it: the store first (it stays the source of truth, and a write has returned
before anything reveals it), then the index. Per network it also holds the names and addresses
in use, so naming and addressing a new node do not scan the network, and each node's
`PeerEntry` (its peer info and that info's JSON), built on first use and dropped whenever the
record changes or the membership core says its connection facts did.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Mapping

from meshvpn.control import messages as m
from meshvpn.config import check_tag
from meshvpn.coord.addressing import first_free_address, unique_name
from meshvpn.coord.authkeys import AuthKeyRejected, verify_token
from meshvpn.coord.events import AdminError
from meshvpn.coord.mapcache import MapBlocks
from meshvpn.coord.peermap import PeerEntry
from meshvpn.coord.store import Network, NodeRecord, Store
from meshvpn.keys import encode_key


CATCH_UP_SLACK = 1.0
"""Seconds by which another coord instance's clock may lag this one's and its admissions still be
read before this one admits (NTP keeps them far closer); a larger lag ends in a conflict, which
`Elsewhere._save_registration` answers by trying the next name or address."""


@dataclass
class _Members:
    """One network's nodes in store order, and the names and addresses they hold."""

    nodes: dict[bytes, NodeRecord] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    addresses: set[int] = field(default_factory=set)
    search_from: int = 0
    """Every address below this is held, so the search for a free one may start here."""
    newest: float = 0.0
    """The latest creation time among the nodes, for reading what other instances admitted since."""


class Roster:
    """The nodes of the store, by key and by network; writes go to the store, then the index."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._writes = 0
        self._load()

    def _load(self) -> None:
        self._nodes: dict[bytes, NodeRecord] = {}
        self._networks: dict[str, _Members] = {}
        self._entries: dict[bytes, PeerEntry] = {}
        self._maps = MapBlocks()
        for node in self._store.nodes():
            self._index(node)

    def admit(self, key: bytes, msg: m.Register, networks: Mapping[str, Network], now: float) -> NodeRecord:
        """The record of a new node from its pre-auth key (inside the caller's transaction): the key
        is verified and its use counted; the record is not stored yet."""
        if msg.auth_key is None:
            raise AuthKeyRejected("auth_key_invalid", "unknown node: an auth key is required")
        auth_key = verify_token(msg.auth_key, self._store.get_auth_key, now)
        network = networks.get(auth_key.network)
        if network is None:
            raise AuthKeyRejected("auth_key_invalid", f"network {auth_key.network} no longer exists")
        self._store.lock_network(network.name)
        self._catch_up(network.name)
        self._store.put_auth_key(replace(auth_key, uses=auth_key.uses + 1))
        return NodeRecord(
            key=key,
            network=network.name,
            name=self.free_name(network.name, msg.hostname),
            address=self.free_address(network),
            hostname=msg.hostname,
            created=now,
            approved=not network.approval_required,
            ephemeral=auth_key.ephemeral,
            auth_key_id=auth_key.id,
        )

    def find(self, ref: str) -> NodeRecord:
        """The one node `ref` names: its base64 key, its overlay address, or its name; AdminError if
        none or several (in several networks) do."""
        nodes = self.nodes()
        matches = [n for n in nodes if encode_key(n.key) == ref]
        matches = matches or [n for n in nodes if n.address == ref] or [n for n in nodes if n.name == ref]
        if not matches:
            raise AdminError(f"no node named {ref!r}")
        if len(matches) > 1:
            where = ", ".join(sorted(n.network for n in matches))
            raise AdminError(f"{ref!r} is ambiguous (networks {where}); name the node by its key")
        return matches[0]

    def tag(self, node: NodeRecord, tag: str, remove: bool = False) -> NodeRecord:
        """`node` with `tag` given or taken away, stored if that changed it; ValueError for a bad tag."""
        check_tag(tag)
        tags = tuple(t for t in node.tags if t != tag) + (() if remove else (tag,))
        if tags == node.tags:
            return node
        node = replace(node, tags=tags)
        self.put(node)
        return node

    # ----- reads

    def get(self, key: bytes) -> NodeRecord | None:
        return self._nodes.get(key)

    def nodes(self, network: str | None = None) -> Iterable[NodeRecord]:
        """The nodes of `network` (all nodes when None) in store order: by network, then age."""
        if network is not None:
            members = self._networks.get(network)
            return () if members is None else members.nodes.values()
        return [node for name in sorted(self._networks) for node in self._networks[name].nodes.values()]

    def entry(self, node: NodeRecord, info: Callable[[NodeRecord], m.PeerInfo]) -> PeerEntry:
        """`node`'s cached peer entry, built with `info` when there is none."""
        entry = self._entries.get(node.key)
        if entry is None:
            entry = self._entries[node.key] = PeerEntry.of(info(node))
        return entry

    def map_frames(self, network: str, viewer: bytes, info: Callable[[NodeRecord], m.PeerInfo],
                   part_bytes: int) -> list[bytes]:
        """The encoded `peer_map` frames for `viewer`: every approved, unrevoked node of `network`
        but the viewer, from blocks of cached JSON (`mapcache`)."""
        def render(key: bytes) -> str | None:
            node = self._nodes[key]
            return self.entry(node, info).json if node.approved and not node.revoked else None
        return self._maps.frames(network, viewer, render, part_bytes)

    def free_name(self, network: str, hostname: str) -> str:
        members = self._networks.get(network)
        return unique_name(hostname, () if members is None else members.names)

    def free_address(self, network: Network) -> str:
        """The lowest address of `network` no node holds."""
        members = self._networks.setdefault(network.name, _Members())
        address = first_free_address(ipaddress.ip_network(network.cidr), members.addresses, members.search_from)
        members.search_from = int(ipaddress.ip_address(address))
        return address

    def hold(self, network: str, *, name: str | None = None, address: str | None = None) -> None:
        """Count `name` or `address` as taken in `network`: another coord instance sharing the
        store just gave it to a node whose record has not reached this roster yet."""
        members = self._networks.setdefault(network, _Members())
        if name is not None:
            members.names.add(name)
        if address is not None:
            members.addresses.add(int(ipaddress.ip_address(address)))

    # ----- writes

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A store transaction; if it rolls back after writes, the roster reloads from the store."""
        writes = self._writes
        try:
            with self._store.transaction():
                yield
        except BaseException:
            if self._writes != writes:
                self._load()
            raise

    def put(self, node: NodeRecord) -> None:
        self._store.put_node(node)
        self._writes += 1
        self._replace(node)

    def _catch_up(self, network: str) -> None:
        """Take in the nodes other coord instances sharing the store admitted to `network` lately
        (created since the newest known, less `CATCH_UP_SLACK` for their clocks). This runs while
        the network's admissions wait for this one, so it reads names and addresses alone, and
        whole records only of the few nodes not known here (decoding every record of the last
        second was most of an admission at 70 a second)."""
        members = self._networks.get(network)
        since = 0.0 if members is None else members.newest - CATCH_UP_SLACK
        unknown = [key for key, name, address in self._store.names_since(network, since)
                   if (node := self._nodes.get(key)) is None or (node.name, node.address) != (name, address)]
        for node in self._store.nodes_by_key(unknown):
            self._replace(node)

    def reload_all(self) -> None:
        """Read every record again (another coord instance sharing the store wrote some)."""
        self._load()

    def reload(self, keys: list[bytes]) -> dict[bytes, NodeRecord | None]:
        """Take the records of `keys` as the store has them now, in one read: another coord
        instance sharing the database wrote them. None for those that are gone."""
        found = {node.key: node for node in self._store.nodes_by_key(list(dict.fromkeys(keys)))}
        for key in keys:
            node = found.get(key)
            if node is not None:
                self._replace(node)
            elif key in self._nodes:
                self._unindex(self._nodes[key])
        return {key: found.get(key) for key in keys}

    def delete(self, key: bytes) -> None:
        self._store.delete_node(key)
        self._writes += 1
        node = self._nodes.get(key)
        if node is not None:
            self._unindex(node)

    def changed(self, key: bytes) -> None:
        """The live facts in `key`'s peer info changed (online, observed host, home relay, NAT)."""
        self._entries.pop(key, None)
        self._maps.touch(key)

    # ----- the index

    def _replace(self, node: NodeRecord) -> None:
        old = self._nodes.get(node.key)
        if old is not None and old.network != node.network:
            self._unindex(old)
        elif old is not None:
            self._release(old, keep=node)
        self._index(node)

    def _index(self, node: NodeRecord) -> None:
        """Add or update `node`; an update keeps its place in the network's order."""
        members = self._networks.setdefault(node.network, _Members())
        self._entries.pop(node.key, None)
        self._maps.add(node.network, node.key)
        self._nodes[node.key] = node
        members.nodes[node.key] = node
        members.names.add(node.name)
        members.addresses.add(_address(node))
        members.newest = max(members.newest, node.created)

    def _unindex(self, node: NodeRecord) -> None:
        self._entries.pop(node.key, None)
        self._maps.remove(node.key)
        del self._nodes[node.key]
        del self._networks[node.network].nodes[node.key]
        self._release(node)

    def _release(self, node: NodeRecord, keep: NodeRecord | None = None) -> None:
        """Free `node`'s name and address, except those its updated record `keep` still holds."""
        members = self._networks[node.network]
        if keep is None or keep.name != node.name:
            members.names.discard(node.name)
        if keep is None or keep.address != node.address:
            address = _address(node)
            members.addresses.discard(address)
            members.search_from = min(members.search_from, address)


def _address(node: NodeRecord) -> int:
    return int(ipaddress.ip_address(node.address))
