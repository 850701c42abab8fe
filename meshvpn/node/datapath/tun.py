"""The node's TUN device, with virtio-net offloads (TSO/USO in, GRO-style writes out) when granted.

python-pytun creates the device (it passes ``IFF_VNET_HDR`` through) and sets address, MTU and
link state; the offload ioctls (``TUNSETVNETHDRSZ``, ``TUNSETOFFLOAD``) are issued here on its
file descriptor, which pytun does not wrap. If the kernel refuses the offloads the device is
reopened plain: one IP packet per read and per write, no virtio header.

The descriptor is non-blocking for ``loop.add_reader``. Reads fill one preallocated buffer and
hand out ranges of it (zero-copy); writes go out with ``os.writev`` straight from the caller's
buffers. Errors on individual packets are counted, never raised into the loop.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
from typing import Iterator, Sequence

import pytun

from meshvpn.node.datapath import fastpath
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.datapath import offload
from meshvpn.node.datapath.offload import F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN, VirtioNetHdr

TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TSO_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
USO_OFFLOADS = TUN_F_USO4 | TUN_F_USO6
READ_BUFFER = VNET_HDR_LEN + 65535
ADDR_GEN_NONE = "1"
"""``addr_gen_mode`` none: the kernel gives the TUN no fe80:: address when it comes up. The mesh is one
link whose nodes know each other by overlay address only: with a link-local address the kernel
would send link-scope multicast (mDNS to ff02::fb, SSDP, LLMNR) from it, which no peer accepts as
the node's (and which no peer could answer), and keep soliciting routers. Without one,
such packets leave from the overlay address (in an IPv6 overlay) and no router solicitation is sent."""


class TunDevice:
    """A TUN device: batch reads of IP packets, coalescing writes, address and link helpers."""

    def __init__(self, device: pytun.TunTapDevice, offloads: int) -> None:
        self._device = device
        self.name: str = device.name
        self.offloads = offloads
        """The ``TUN_F_*`` bits the kernel accepted; 0 for a plain device."""
        self._fd = device.fileno()
        self.buffer = bytearray(READ_BUFFER)
        """Where reads land; ranges from :meth:`segments` point into it."""
        self._view = memoryview(self.buffer)
        self.read_errors = 0
        """Super-packets dropped because their virtio header or IP headers were malformed."""
        self.write_errors = 0
        """Writes the kernel refused (counted per write call)."""
        self.packets_written = 0
        """IP packets handed to :meth:`write_packets`."""
        self.writes = 0
        """Write syscalls made for them; fewer than packets when segments were merged."""
        os.set_blocking(self._fd, False)

    @classmethod
    def open(cls, name: str, mtu: int, offload: bool = True) -> TunDevice:
        """Create (or attach to) TUN ``name`` with ``mtu``; with offloads if asked and granted."""
        if offload:
            device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR)
            granted = _enable_offloads(device.fileno())
            if granted:
                device.mtu = mtu
                return cls(device, granted)
            device.close()
        device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        device.mtu = mtu
        return cls(device, 0)

    def fileno(self) -> int:
        return self._fd

    @property
    def offload(self) -> bool:
        """Whether reads and writes carry a virtio_net_hdr (TSO reads, GRO writes)."""
        return self.offloads != 0

    def read(self) -> int:
        """Read once into :attr:`buffer`: the bytes read, virtio header included when offloading.

        Raises BlockingIOError when nothing is queued.
        """
        return os.readv(self._fd, (self._view,))

    def read_segments(self) -> Iterator[tuple[int, int]]:
        """Read once and yield ``(start, end)`` ranges of :attr:`buffer`, one IP packet each (as :meth:`segments`).

        Raises BlockingIOError when nothing is queued.
        """
        return self.segments(self.read())

    def segments(self, size: int) -> Iterator[tuple[int, int]]:
        """The ``(start, end)`` ranges of the read that left ``size`` bytes in :attr:`buffer`, one IP packet each.

        A super-packet is split in place, so each range is valid only until the next one is taken.
        """
        if not self.offloads:
            yield 0, size
            return
        buf = self.buffer
        flags, gso_type = buf[0], buf[1]
        if gso_type == GSO_NONE:
            if flags & F_NEEDS_CSUM:
                self._finish_checksum(size)
            yield VNET_HDR_LEN, size
            return
        try:
            hdr = VirtioNetHdr.decode(buf)
            yield from offload.split_in_place(buf, VNET_HDR_LEN, size, hdr)
        except RemoteProtocolError:
            self.read_errors += 1

    def _finish_checksum(self, size: int) -> None:
        """Leave a partial checksum that receivers recognise; complete any other (rare) one."""
        packet = self._view[VNET_HDR_LEN:size]
        try:
            hdr = VirtioNetHdr.decode(self.buffer)
            if offload.partial_checksum_at(packet) != (hdr.csum_start, hdr.csum_offset):
                offload.complete_checksum(packet, hdr.csum_start, hdr.csum_offset)
        except RemoteProtocolError:
            self.read_errors += 1

    def write_packets(self, packets: Sequence[memoryview]) -> None:
        """Write IP packets, merging adjacent TCP segments into super-packets when offloading.

        With offloads, ``packets`` must be writable views (merged heads are rewritten in place).
        """
        fd = self._fd
        self.packets_written += len(packets)
        if self.offloads:
            batch = fastpath.coalesce_iov(packets)
            self.writes += len(batch)
            for iov in batch:
                try:
                    os.writev(fd, iov)
                except OSError:
                    self.write_errors += 1
            return
        self.writes += len(packets)
        for packet in packets:
            where = offload.partial_checksum_at(packet)
            if where is not None:
                offload.complete_checksum(packet, *where)
            try:
                os.write(fd, packet)
            except OSError:
                self.write_errors += 1

    def set_address(self, cidr: str) -> None:
        """Assign ``cidr`` (e.g. ``10.77.0.1/24`` or ``fd00::1/64``) to the device."""
        interface = ipaddress.ip_interface(cidr)
        if interface.version == 4:
            self._device.addr = str(interface.ip)
            self._device.netmask = str(interface.netmask)
        else:
            subprocess.run(["ip", "-6", "addr", "add", cidr, "dev", self.name], check=True, capture_output=True)

    def set_gso_max_size(self, size: int) -> None:
        """Cap the super-packets the kernel builds at ``size`` bytes.

        Sized so one super-packet fits one UDP GSO send, each costs one ``sendmsg``, one
        ``recvmsg`` and one TUN write on the far side instead of two of each (pytun cannot set it).
        """
        argv = ["ip", "link", "set", "dev", self.name, "gso_max_size", str(size)]
        subprocess.run(argv, check=True, capture_output=True)

    def up(self) -> None:
        """Bring the link up, without an IPv6 link-local address (`ADDR_GEN_MODE`)."""
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.name}/addr_gen_mode", "w") as setting:
                setting.write(ADDR_GEN_NONE)
        except OSError:
            pass  # IPv6 is off on this host: there is no address to generate
        self._device.up()

    def close(self) -> None:
        self._device.close()


def _enable_offloads(fd: int) -> int:
    """Ask for TSO (and USO if the kernel knows it); the bits granted, or 0 if refused."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
    except OSError:
        return 0
    for wanted in (TSO_OFFLOADS | USO_OFFLOADS, TSO_OFFLOADS):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, wanted)
        except OSError:
            continue
        return wanted
    return 0
