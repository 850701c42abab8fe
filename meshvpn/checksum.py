"""RFC 1071 checksums, for whoever builds or checks IP packets: the data path's offload, the LAN
party's IGMP and broadcast copies, and the packet builders of the tests.

Kept apart from the data path so that packages below the node (``meshvpn.lan``) need nothing of it.
"""

from __future__ import annotations


def fold(total: int) -> int:
    """Fold a sum of big-endian 16-bit words (or any int congruent to it mod 0xFFFF) to 16 bits.

    ``2**16 ≡ 1 (mod 0xFFFF)``, so ``int.from_bytes(data, "big")`` is such an int for even-length
    data: one C call instead of a Python loop. The result is 1..0xFFFF, 0 only for zero input,
    exactly as end-around-carry folding gives.
    """
    rest = total % 0xFFFF
    return rest if rest or not total else 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The folded ones'-complement sum of ``data`` (an odd last byte is padded with zero)."""
    value = int.from_bytes(data, "big")
    return fold(value << 8 if len(data) & 1 else value)


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` plus an unfolded ``initial`` sum (e.g. a pseudo-header)."""
    value = int.from_bytes(data, "big")
    return ~fold((value << 8 if len(data) & 1 else value) + initial) & 0xFFFF
