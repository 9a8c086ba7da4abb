"""Storage backends behind one small interface, and ``open_store(url)`` to pick one."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from ..limits import MAX_RECORD_BYTES
from .base import Applied, Cap, Created, Record, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "DEFAULT_STORE_URL",
    "Applied",
    "Cap",
    "Created",
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "Store",
    "default_store_url",
    "open_store",
]

DEFAULT_STORE_URL = "sqlite:///.flowstate/state.db"


def default_store_url() -> str:
    """``$FLOWSTATE_STORE`` if set, else the embedded SQLite file under ``.flowstate/``."""
    return os.environ.get("FLOWSTATE_STORE") or DEFAULT_STORE_URL


def open_store(url: str | None = None, *, max_record_bytes: int = MAX_RECORD_BYTES) -> Store:
    """Open a store from a URL: ``memory://``, ``sqlite:///path.db``, ``postgresql://…``.

    ``sqlite:///rel/path.db`` is relative to the working directory, ``sqlite:////abs/path.db``
    absolute; ``?synchronous=normal`` relaxes durability (see :mod:`flowstate.stores.sqlite`).
    ``max_record_bytes`` (default 16 MiB) is the most one record may take; a write that would
    make a record larger fails with ``StateValidationError`` and writes nothing.
    """
    url = url or default_store_url()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore(max_record_bytes=max_record_bytes)
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ValueError(f"a SQLite URL looks like sqlite:///path/to/file.db, got {url!r}")
        path = url[len("sqlite:///") :].split("?", 1)[0] or ":memory:"
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return SQLiteStore(
            path,
            synchronous=options.get("synchronous", "FULL"),
            max_record_bytes=max_record_bytes,
        )
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, max_record_bytes=max_record_bytes)
    raise ValueError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path.db or postgresql://..."
    )
