"""The store behind the cache and the reports, one interface (:class:`~evalproxy.storage.base.Store`) and its backends.

:func:`open_store` picks the backend from a location: a directory gives the embedded diskcache store.
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


def open_store(location: str | Path) -> Store:
    """The store at ``location`` (a cache directory). Opening may block (it creates files): call it in a thread."""
    return DiskStore(location)


__all__ = ["Claim", "DiskStore", "Failure", "SavedPair", "Store", "StoreClosedError", "StoredAnswer", "cache_key",
           "open_store"]
