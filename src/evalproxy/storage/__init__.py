"""The store behind the cache and the reports, one interface (:class:`~evalproxy.storage.base.Store`) and its backends.

:func:`open_store` picks the backend from a location: a directory gives the embedded diskcache store, a
``redis://``, ``rediss://`` or ``unix://`` URL the shared Redis/Valkey store (:mod:`evalproxy.storage.redis`).
"""

from __future__ import annotations

from pathlib import Path

from evalproxy.adapter.core.net import is_store_url as is_url
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
    """The store at ``location``: a cache directory, or a Redis URL. Opening a directory may block (it creates
    files): call it in a thread. A Redis store connects on its first call, so a server that is down fails calls,
    never the opening."""
    if is_url(location):
        from evalproxy.storage.redis import RedisStore

        return RedisStore(str(location))
    return DiskStore(location)


async def copy_store(src: Store, dst: Store, *, batch: int = 500) -> dict[str, int]:
    """Copy every answer (its bytes as stored: a damaged one is skipped), saved pair and failure of ``src`` into
    ``dst``, between a cache directory and a Redis store either way. Slot counters and leases belong to running
    runs and are not copied. Returns how many of each were copied."""
    copied = {"answers": 0, "skipped": 0, "saved_requests": 0, "failures": 0}
    async for chunk in src.raw_answers(batch):
        good = []
        for name, blob in chunk:
            try:
                StoredAnswer.decode(blob)
            except Exception:
                copied["skipped"] += 1
                continue
            good.append((name, blob))
        await dst.put_raw_answers(good)
        copied["answers"] += len(good)
    for pair in await src.saved_pairs(with_responses=False):
        await dst.save_pair(pair)
        copied["saved_requests"] += 1
    for failure in await src.failures():
        await dst.record_failure(failure)
        copied["failures"] += 1
    return copied


__all__ = ["Claim", "DiskStore", "Failure", "SavedPair", "Store", "StoreClosedError", "StoredAnswer", "cache_key",
           "copy_store", "is_url", "open_store"]
