"""``python -m asyncchat``: serve TCP (8080) and UDP (8000) on one hub."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one hub over TCP and UDP until SIGINT or SIGTERM."""
    from .cli import run

    return run(argv, prog="python -m asyncchat", tcp=True, udp=True)


if __name__ == "__main__":
    raise SystemExit(main())
