"""The TLS envelope of relay streams: the server's certificate files, and a client that talks to it."""

import asyncio
import ssl

import pytest

from meshvpn import tlsenvelope
from meshvpn.errors import ConfigError
from meshvpn.lab.mesh import self_signed_certificate


def test_a_listener_without_certificate_files_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^tls: listen is set, so cert_file and key_file are needed"):
        tlsenvelope.server_context(None, None, "tls")


def test_unreadable_certificate_files_are_a_config_error_naming_the_files(tmp_path):
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"^tls: cannot load .*bad.crt"):
        tlsenvelope.server_context(tmp_path / "bad.crt", tmp_path / "missing.key", "tls")


def test_a_client_reaches_a_server_on_a_self_signed_certificate(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "relay")
    server_side = tlsenvelope.server_context(cert, key, "tls")

    async def echo_once() -> tuple[bytes, str]:
        async def serve(reader, writer):
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tlsenvelope.client_context())
        writer.write(b"hello")
        echoed = await reader.readexactly(5)
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        server.close()
        await server.wait_closed()
        return echoed, version

    echoed, version = asyncio.run(asyncio.wait_for(echo_once(), 10))
    assert echoed == b"hello" and version in ("TLSv1.2", "TLSv1.3")


def test_the_client_refuses_anything_older_than_tls_1_2():
    assert tlsenvelope.client_context().minimum_version == ssl.TLSVersion.TLSv1_2
