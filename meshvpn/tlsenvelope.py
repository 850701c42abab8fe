"""TLS as an envelope around the relay's TCP streams, for networks that let only TLS through.

Hotel and office networks often drop UDP and every TCP port but 443, and some pass only what
looks like TLS there. The relay can therefore also listen with TLS (``tls.listen``), and a node
whose UDP and plain TCP get no answer tries it. The TLS layer is only the envelope: inside it
runs the same meshvpn channel as on plain TCP, pinned to the relay's public key, and the relayed
packets inside that are still sealed end to end between the nodes. So the node does not verify
the certificate (it adds no trust the pinned key does not already give, and a self-signed
certificate then works); a middlebox that inspects TLS may, which is why the operator docs ask
for a real certificate for the relay's DNS name.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from meshvpn.errors import ConfigError
from meshvpn.dualstack import listen_hosts

if TYPE_CHECKING:
    from meshvpn.config import TlsListenConfig

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to finish the TLS handshake."""


def server_context(cert_file: Path | None, key_file: Path | None, where: str) -> ssl.SSLContext:
    """A server context from PEM files; ConfigError naming `where` (the config key) if they do not load."""
    if cert_file is None or key_file is None:
        raise ConfigError(f"{where}: listen is set, so cert_file and key_file are needed")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load {cert_file} and {key_file}: {exc}") from None
    return context


def client_context() -> ssl.SSLContext:
    """A client context that encrypts without verifying the server (see the module docstring)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def listen(tls: TlsListenConfig, factory: Callable[[], asyncio.Protocol], **options) -> Optional[asyncio.Server]:
    """The TLS listener a server's ``tls`` section asks for (None when ``tls.listen`` is empty):
    the same protocol as on its plain TCP listener, inside TLS. ConfigError for bad certificate
    files, OSError when the address cannot be bound."""
    if tls.listen is None:
        return None
    context = server_context(tls.cert_file, tls.key_file, "tls")
    return await asyncio.get_running_loop().create_server(
        factory, listen_hosts(tls.listen.host), tls.listen.port, ssl=context, reuse_address=True,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT, **options)
