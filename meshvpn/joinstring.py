"""The join string: one pasteable text that lets a machine join a network, `mvk-<base32>`.

It carries everything `meshvpn join` needs and nothing it has to trust from the network: the
coordination server's address (`host:port`, a DNS name or an IP), the server's public key, and
the 32-byte secret of a pre-auth key (`meshvpn.coord.authkeys`; the key id is derived from the
secret, so the token is rebuilt from it). The node pins the key from the string: whoever
answers at the address must prove it holds that key in the Noise handshake before the node
sends the secret, encrypted to it, so a spoofed name or a man in the middle learns nothing and
admits no one. The string is as secret as the pre-auth key it holds.

Bytes before base32 (RFC 4648, lowercase, unpadded, so no `-`, `_` or `=` to break a
double-click selection): ``version (1) | secret (32) | coord key (32) | address (UTF-8) |
check (4)``, where check is BLAKE2b-32 of what precedes it, so a string damaged in copying is
told apart from a refused key. Capitals read the same (`qr_text` shows the string in them, which
QR codes store more densely). A plain pre-auth token (`mvk-<id>-<secret>`, two dashes) is not a
join string. Sans-IO: the console and the command line both use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from meshvpn.configkinds import Address, parse_address
from meshvpn.coord.authkeys import SECRET_SIZE, parse_token, token_for_secret
from meshvpn.errors import MeshError, RemoteProtocolError
from meshvpn.keys import KEY_LENGTH

PREFIX = "mvk-"
VERSION = 1
CHECK_SIZE = 4
MAX_ADDRESS = 261
"""Longest `host:port` text: a 253-character name, a colon and a 5-digit port (and slack)."""
_PERSON = b"meshvpn-join"
_FIXED = 1 + SECRET_SIZE + KEY_LENGTH


class JoinStringError(RemoteProtocolError):
    """Pasted text is not a usable join string; the text says what to do."""


@dataclass(frozen=True)
class JoinString:
    """What a join string holds."""

    coord: Address
    """Where the coordination server's control channel listens."""
    coord_key: bytes
    """The server's public key, pinned by the node."""
    secret: bytes
    """The pre-auth key's secret."""

    @property
    def auth_key(self) -> str:
        """The pre-auth token (`mvk-<id>-<secret>`) the node presents at its first register."""
        return token_for_secret(self.secret)


def encode(coord: Address | str, coord_key: bytes, auth_key: str) -> str:
    """The join string for pre-auth token `auth_key` at the server `coord` holding `coord_key`.

    Raises MeshError for a token or key that cannot make a working string (a local mistake)."""
    address = str(parse_address(coord) if isinstance(coord, str) else coord).encode()
    try:
        _, secret = parse_token(auth_key)
    except MeshError:
        raise MeshError("not a pre-auth token (mvk-<id>-<secret>)") from None
    if len(coord_key) != KEY_LENGTH or not any(coord_key):
        raise MeshError("the coordination server's public key must be 32 bytes and not all zero")
    if address.endswith(b":0"):
        raise MeshError("the coordination server address needs a port other than 0")
    if not 0 < len(address) <= MAX_ADDRESS:
        raise MeshError(f"coordination server address too long: {address[:40]!r}...")
    body = bytes((VERSION,)) + secret + coord_key + address
    text = base64.b32encode(body + _check(body)).decode("ascii").rstrip("=").lower()
    return PREFIX + text


def decode(text: str) -> JoinString:
    """Read a join string; JoinStringError (a RemoteProtocolError) says why it is not one."""
    if not isinstance(text, str):
        raise JoinStringError("a join string is text")
    text = text.strip()
    if is_plain_token(text):
        raise JoinStringError("this is a bare pre-auth key, not a join string: ask the host for the whole "
                              "`mvk-...` line that `meshvpn coord key create` printed with it")
    text = text.lower()  # a QR code carries it in capitals (denser); base32 does not mind
    if not text.startswith(PREFIX):
        raise JoinStringError("not a join string: it starts with mvk- (from `meshvpn coord key create`)")
    body = _unbase32(text[len(PREFIX):])
    if len(body) < _FIXED + 1 + CHECK_SIZE or len(body) > _FIXED + MAX_ADDRESS + CHECK_SIZE:
        raise JoinStringError("join string too short or too long: copy it again, whole")
    body, check = body[:-CHECK_SIZE], body[-CHECK_SIZE:]
    if _check(body) != check:
        raise JoinStringError("join string damaged (its checksum does not match): copy it again, whole")
    if body[0] != VERSION:
        raise JoinStringError(f"join string version {body[0]} is not known to this meshvpn: upgrade it")
    secret, coord_key = body[1 : 1 + SECRET_SIZE], body[1 + SECRET_SIZE : _FIXED]
    if not any(coord_key):
        raise JoinStringError("the join string's coordination server key is all zero")
    try:
        coord = parse_address(body[_FIXED:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise JoinStringError(f"the join string's coordination server address is bad: {err}") from None
    if coord.port == 0:
        raise JoinStringError("the join string's coordination server address has port 0")
    return JoinString(coord, coord_key, secret)


def qr_text(join_string: str) -> str:
    """The string as a QR code drawn with block characters for a terminal; a note without `qrcode`."""
    try:
        import qrcode
    except ImportError:
        return "(a QR code needs the qrcode package: pip install 'meshvpn[qr]')"
    code = qrcode.QRCode(border=2)
    code.add_data(join_string.upper())
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue().rstrip("\n")


def is_plain_token(text: str) -> bool:
    """Whether `text` is a pre-auth token as such (`mvk-<id>-<secret>`) rather than a join string."""
    try:
        parse_token(text)
    except MeshError:
        return False
    return True


def _unbase32(text: str) -> bytes:
    if not text.isascii() or not text.isalnum():
        raise JoinStringError("join string has characters base32 does not use: copy it again, whole")
    try:
        body = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        body = None
    if body is None or base64.b32encode(body).decode("ascii").rstrip("=").lower() != text.lower():
        raise JoinStringError("join string is not valid base32: copy it again, whole")
    return body


def _check(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=CHECK_SIZE, person=_PERSON).digest()
