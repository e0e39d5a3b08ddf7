"""``python -m asyncchat.bench``: the load generator (see :mod:`asyncchat.bench`)."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
