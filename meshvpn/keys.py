"""Curve25519 key pairs and the private key files that hold them.

A key is written as standard base64 of its 32 bytes, as WireGuard writes them; the public key
is a node's identity everywhere. A private key file holds that text on one line and must not
be accessible by group or others: a key that others could read is treated as already leaked.
"""

import base64
import binascii
import os
import stat
from pathlib import Path

from nacl.public import PrivateKey

from meshvpn.errors import ConfigError

KEY_LENGTH = 32


def generate_private_key() -> bytes:
    """Return a fresh random Curve25519 private key."""
    return bytes(PrivateKey.generate())


def public_key(private: bytes) -> bytes:
    """Return the Curve25519 public key of `private`."""
    return bytes(PrivateKey(private).public_key)


def encode_key(key: bytes) -> str:
    """Write a 32-byte key as standard base64."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Read a base64 key; raise ValueError saying why when it is not base64 of 32 bytes.

    Only the canonical spelling is accepted, so each key has exactly one text form (its identity).
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError, TypeError):
        raise ValueError(f"not a base64 key: {text!r}") from None
    if len(key) != KEY_LENGTH:
        raise ValueError(f"a key is {KEY_LENGTH} bytes, this one is {len(key)}: {text!r}")
    if encode_key(key) != text.strip():
        raise ValueError(f"not the canonical base64 of a key (last character): {text!r}")
    return key


def write_private_key(path: str | Path, private: bytes | None = None) -> bytes:
    """Create `path` with mode 0600 holding `private` (a fresh key when None); never overwrite.

    Returns the private key written.
    """
    key = generate_private_key() if private is None else private
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {path} already exists; refusing to overwrite it") from None
    except OSError as err:
        raise ConfigError(f"cannot create key file {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(encode_key(key) + "\n")
    return key


def exposure(path: str | Path, mode: int) -> str | None:
    """Why a file of `mode` must not hold a secret (group or others may access it), or None."""
    mode = stat.S_IMODE(mode)
    if mode & 0o077:
        return f"{path} is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
    return None


def read_secret_file(path: str | Path, what: str, limit: int = 4096) -> str:
    """The text of a file holding a secret (a key, a shared secret), refusing one that group or
    others can access: a secret others could read is treated as already leaked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as file:
        problem = exposure(path, os.fstat(file.fileno()).st_mode)
        if problem is not None:
            raise ConfigError(f"{what} {problem}")
        return file.read(limit)


def read_private_key(path: str | Path) -> bytes:
    """Read a private key file, refusing one that group or others can access."""
    text = read_secret_file(path, "key file", 4 * KEY_LENGTH)
    try:
        return decode_key(text)
    except ValueError:
        raise ConfigError(f"key file {path} does not hold a base64 {KEY_LENGTH}-byte private key") from None
