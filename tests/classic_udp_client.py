"""The classic UDP chat client from the socket tutorials, written their way.

A blocking ``socket.socket(AF_INET, SOCK_DGRAM)``; a ``threading.Thread``
that receives datagrams and collects (in the tutorials: prints) them; the
name as the first datagram; then every message as one ``name:message``
datagram.  The tests drive it unchanged against the UDP room.
"""

from __future__ import annotations

import socket
import threading

TIMEOUT = 10.0


class ClassicClient:
    """Blocking socket plus a receiving thread; ``wait_for`` blocks up to TIMEOUT."""

    def __init__(self, server: tuple[str, int], name: str) -> None:
        self.server = server
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # lets the thread notice stop() within 0.1 s
        self.datagrams: list[bytes] = []
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name=f"classic-{name}", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        """Start receiving, then send the name (the tutorial's first datagram)."""
        self._thread.start()
        self.sock.sendto(self.name.encode(), self.server)

    def say(self, message: str) -> None:
        """Send one typed message the classic way: ``name:message``."""
        self.sock.sendto(f"{self.name}:{message}".encode(), self.server)

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.datagrams.append(data)
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            data = b"".join(self.datagrams)
        return data.decode().splitlines()

    def wait_for(self, wanted: str, timeout: float = TIMEOUT) -> bool:
        """Block until a received line equals *wanted*; False after *timeout* seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: wanted in b"".join(self.datagrams).decode().splitlines(), timeout)

    def wait_for_count(self, wanted: str, count: int, timeout: float = TIMEOUT) -> bool:
        """Block until *wanted* was received *count* times; False after *timeout* seconds."""
        with self._cond:
            return self._cond.wait_for(
                lambda: b"".join(self.datagrams).decode().splitlines().count(wanted) >= count, timeout
            )

    def wait_for_prefix(self, prefix: str, timeout: float = TIMEOUT) -> str | None:
        """Block until a received line starts with *prefix*; return it (None after *timeout*)."""

        def find() -> str | None:
            for line in b"".join(self.datagrams).decode().splitlines():
                if line.startswith(prefix):
                    return line
            return None

        with self._cond:
            return self._cond.wait_for(find, timeout)

    def stop(self) -> None:
        """Stop the thread and close the socket (idempotent)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=TIMEOUT)
        self.sock.close()
