"""TLS for the TCP relay, with certificates made by ``trustme`` for each test."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from asyncchat import Hub, Limits
from asyncchat.cli import build_parser, server_tls_context
from asyncchat.tcp import TcpServer, serve_tcp

from .chatclient import TIMEOUT
from .hardening import check_chat, fail_on_error_logs, tcp_opener, wait_for


@pytest.fixture(autouse=True)
def no_error_logs() -> Iterator[None]:
    with fail_on_error_logs():
        yield


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """PEM files of a server certificate for localhost, 127.0.0.1 and ::1, as the CLI takes them."""
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    folder = tmp_path_factory.mktemp("tls")
    chain, key = folder / "server.pem", folder / "server.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return str(chain), str(key)


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts only the test CA and verifies the host name."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def tls_server(cert_files: tuple[str, str]) -> AsyncIterator[TcpServer]:
    context = server_tls_context(*cert_files)
    assert context is not None
    hub = Hub(limits=Limits(max_per_ip=1_000, login_timeout=1.0))
    async with serve_tcp(hub, host="127.0.0.1", port=0, ssl=context) as server:
        yield server


async def test_verified_clients_chat_over_tls(tls_server: TcpServer, client_context: ssl.SSLContext) -> None:
    await check_chat(tcp_opener(tls_server.address, ssl=client_context, server_hostname="localhost"))
    await check_chat(tcp_opener(tls_server.address, ssl=client_context))  # checked against the IP address SAN


async def test_client_without_the_ca_fails_verification(tls_server: TcpServer) -> None:
    untrusting = ssl.create_default_context()  # the system roots do not include the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        async with asyncio.timeout(TIMEOUT):
            await asyncio.open_connection(*tls_server.address, ssl=untrusting, server_hostname="localhost")
    # The failed handshake never became a member, and the server still serves.
    assert tls_server.hub.statistics().members == 0
    assert tls_server.connections == 0


async def test_client_checking_the_wrong_host_name_fails(
    tls_server: TcpServer, client_context: ssl.SSLContext, ca: trustme.CA
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        async with asyncio.timeout(TIMEOUT):
            await asyncio.open_connection(*tls_server.address, ssl=client_context, server_hostname="evil.example")


async def test_plain_text_client_on_the_tls_port(tls_server: TcpServer, client_context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection(*tls_server.address)
    try:
        writer.write(b"alice\nhello in clear text\n")
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read()  # the server gives up on the handshake and closes
        assert b"welcome" not in data
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    assert tls_server.hub.statistics().members == 0
    await check_chat(tcp_opener(tls_server.address, ssl=client_context, server_hostname="localhost"))


async def test_stalled_tls_handshake_is_bounded_by_the_login_timeout(
    tls_server: TcpServer, client_context: ssl.SSLContext
) -> None:
    """A TLS slowloris: connections that never send a ClientHello are closed (login_timeout=1 s)."""
    stalled = [await asyncio.open_connection(*tls_server.address) for _ in range(20)]
    try:
        async with asyncio.timeout(TIMEOUT):
            for reader, _ in stalled:
                assert await reader.read() == b""
    finally:
        for _, writer in stalled:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
    await check_chat(tcp_opener(tls_server.address, ssl=client_context, server_hostname="localhost"))


async def test_shutdown_reaches_tls_members(cert_files: tuple[str, str], client_context: ssl.SSLContext) -> None:
    context = server_tls_context(*cert_files)
    hub = Hub(limits=Limits(shutdown_timeout=2.0))
    server = serve_tcp(hub, host="127.0.0.1", port=0, ssl=context)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(*server.address, ssl=client_context, server_hostname="localhost")
        writer.write(b"tlsuser\n")
        async with asyncio.timeout(TIMEOUT):
            while b"joined lobby" not in await reader.readline():
                pass
    finally:
        await server.aclose()
    async with asyncio.timeout(TIMEOUT):
        rest = await reader.read()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    assert rest == b"*** closing: server is shutting down\n"
    await wait_for(lambda: hub.statistics().members == 0)


def test_cli_tls_flags(cert_files: tuple[str, str], tmp_path: Path) -> None:
    parser = build_parser("asyncchat", tcp=True, udp=False)
    args = parser.parse_args(["--tls-cert", cert_files[0], "--tls-key", cert_files[1]])
    context = server_tls_context(args.tls_cert, args.tls_key)
    assert isinstance(context, ssl.SSLContext)
    assert server_tls_context(None, None) is None
    with pytest.raises(ValueError, match="--tls-cert and --tls-key must be given together"):
        server_tls_context(cert_files[0], None)
    with pytest.raises(FileNotFoundError):
        server_tls_context(str(tmp_path / "missing.pem"), cert_files[1])
    with pytest.raises(ssl.SSLError):  # the key is not a certificate
        server_tls_context(cert_files[1], cert_files[1])
