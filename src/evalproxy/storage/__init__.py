"""The store behind the cache and the reports, one interface (:class:`~evalproxy.storage.base.Store`) and its backends.

:func:`open_store` picks the backend from a location: a directory gives the embedded diskcache store, a
``redis://``, ``rediss://`` or ``unix://`` URL the shared Redis/Valkey store (:mod:`evalproxy.storage.redis`).
"""

from __future__ import annotations

from pathlib import Path

from evalproxy.storage.base import (
    Claim,
    Failure,
    SavedPair,
    Store,
    StoreClosedError,
    StoredAnswer,
    cache_key,
)
from evalproxy.storage.disk import DiskStore


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a server store rather than a cache directory."""
    return isinstance(location, str) and location.startswith(("redis://", "rediss://", "unix://"))


def open_store(location: str | Path) -> Store:
    """The store at ``location``: a cache directory, or a Redis URL. Opening a directory may block (it creates
    files): call it in a thread. A Redis store connects on its first call, so a server that is down fails calls,
    never the opening."""
    if is_url(location):
        from evalproxy.storage.redis import RedisStore

        return RedisStore(str(location))
    return DiskStore(location)


__all__ = ["Claim", "DiskStore", "Failure", "SavedPair", "Store", "StoreClosedError", "StoredAnswer", "cache_key",
           "is_url", "open_store"]
