"""TLS for the TCP relay, with certificates made by ``trustme`` for each test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
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


class MemoryTlsClient:
    """A TLS client over a raw loopback socket whose handshake flights the test sends one at a time."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, address: tuple[str, int], context: ssl.SSLContext) -> MemoryTlsClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        async with asyncio.timeout(TIMEOUT):
            await asyncio.get_running_loop().sock_connect(sock, address)
        return cls(sock, context)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            async with asyncio.timeout(TIMEOUT):
                await self.loop.sock_sendall(self.sock, data)

    async def _receive(self) -> bool:
        async with asyncio.timeout(TIMEOUT):
            data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def handshake_but_last_flight(self) -> None:
        """Send the ClientHello and read the server's answer; keep the client's Finished unsent."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                await self._flush()
                assert await self._receive(), "the server closed during the handshake"

    async def read_all(self) -> bytes:
        """Send what is pending (the Finished), then read application data until the server closes."""
        await self._flush()
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:  # the server's close_notify
                    return received
                received += chunk
            except ssl.SSLWantReadError:
                if not await self._receive():
                    return received
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return received


@pytest.mark.parametrize("finished", ["during", "after"])
async def test_tls_handshake_finishing_after_shutdown_began_is_refused_cleanly(
    cert_files: tuple[str, str], client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture, finished: str
) -> None:
    """The server accepted the connection before aclose(); its TLS handshake ends only after aclose() began."""
    caplog.set_level(logging.DEBUG, logger="asyncchat")
    context = server_tls_context(*cert_files)
    hub = Hub(limits=Limits(shutdown_timeout=2.0))
    server = serve_tcp(hub, host="127.0.0.1", port=0, ssl=context)
    await server.start()
    late = await MemoryTlsClient.connect(server.address, client_context)
    try:
        await late.handshake_but_last_flight()  # the server answered: it accepted the connection
        closing = asyncio.create_task(server.aclose())
        if finished == "after":
            async with asyncio.timeout(TIMEOUT):
                await closing
        else:
            await wait_for(lambda: server.closing)
        received = await late.read_all()
        async with asyncio.timeout(TIMEOUT):
            await closing
    finally:
        late.sock.close()
        await server.aclose()
    assert received == b"*** closing: server is shutting down\n"
    statistics = hub.statistics()
    assert statistics.members == 0
    assert statistics.refused == {"closing": 1}
    assert server.connections == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "connection 1 from" not in caplog.text  # never became a member
