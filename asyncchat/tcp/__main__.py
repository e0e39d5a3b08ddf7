"""``python -m asyncchat.tcp``: serve a chat over TCP until SIGINT or SIGTERM.

The command line lives in :mod:`asyncchat.cli`, which imports this package
(already imported by ``-m``), never the other way round: so the transport
runs once, under its package name.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..cli import run


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one hub over TCP; return the exit code."""
    return run(argv, prog="python -m asyncchat.tcp", tcp=True, udp=False)


if __name__ == "__main__":
    raise SystemExit(main())
