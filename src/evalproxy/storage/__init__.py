"""The store behind the cache and the reports, one interface (:class:`~evalproxy.storage.base.Store`) and its backends.

:func:`open_store` picks the backend from a location: a directory gives the embedded diskcache store, a
``redis://``, ``rediss://`` or ``unix://`` URL the shared Redis/Valkey store (:mod:`evalproxy.storage.redis`).
"""

from __future__ import annotations

from pathlib import Path

from evalproxy.adapter.core.errors import (
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    StoreUnavailableError,
)
from evalproxy.adapter.core.net import is_store_url as is_url
from evalproxy.adapter.core.redact import REDACTED
from evalproxy.storage.base import (
    Claim,
    Failure,
    SavedPair,
    Store,
    StoredAnswer,
    cache_key,
)
from evalproxy.storage.codec import dictionaries_of
from evalproxy.storage.disk import DiskStore


def open_store(location: str | Path) -> Store:
    """The store at ``location``: a cache directory, or a Redis URL. Opening a directory may block (it creates
    files): call it in a thread; one that cannot be opened raises ``StoreUnavailableError`` (or ``StoreFullError``,
    ``StoreReadOnlyError``). A Redis store connects on its first call, so a server that is down fails calls, never
    the opening."""
    if is_url(location):
        from evalproxy.storage.redis import RedisStore

        return RedisStore(str(location))
    return DiskStore(location)


def run_store(where: str | Path) -> str | Path:
    """The store a reader (``evalproxy cache``, ``compare``) opens for ``where``: a store URL as given; for a run
    directory, the store its caching used, by the rule the proxy used (:meth:`AdapterConfig.cache_dir`): the
    caching interceptor's ``cache_url`` or ``cache_dir``, else the adapter's ``caching_dir``, as the effective
    config it wrote (``adapter_config.yaml``) says, else its ``cache/`` directory; any other directory is a cache
    directory itself.

    A run's URL whose password the run dir keeps redacted cannot be opened from there: ``StoreUnavailableError``
    says to give the URL itself. An effective config that cannot be read raises ``ConfigError``."""
    if is_url(where):
        return str(where)
    run_dir = Path(where)
    configured = _cache_of(run_dir)
    if configured is not None and is_url(configured):
        if REDACTED in configured:
            raise StoreUnavailableError(f"the run in {run_dir} used the store {configured}, whose credentials the "
                                        "run directory does not keep: give the store's URL itself")
        return configured
    if configured is not None and (run_dir / configured).is_dir():
        return run_dir / configured  # an absolute path stays itself
    return run_dir / "cache" if (run_dir / "cache").is_dir() else run_dir


def _cache_of(run_dir: Path) -> str | None:
    """Where a run directory's effective config says its cache was: the first enabled caching interceptor's
    ``cache_url`` or ``cache_dir``, else the adapter's ``caching_dir``. Only those entries are read (the rest of a
    run's config may be of another version, or hostile): nothing it names is imported or acted on."""
    from evalproxy.adapter.core.loads import read_yaml
    from evalproxy.adapter.server.output import CONFIG_FILE

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    doc = read_yaml(path)
    adapter = doc.get("adapter_config") if isinstance(doc, dict) else None
    if not isinstance(adapter, dict):
        return None
    interceptors = adapter.get("interceptors")
    for ic in interceptors if isinstance(interceptors, list) else []:
        if isinstance(ic, dict) and ic.get("name") == "caching" and ic.get("enabled", True) is not False:
            config = ic.get("config")
            for key in ("cache_url", "cache_dir"):
                value = config.get(key) if isinstance(config, dict) else None
                if isinstance(value, str) and value:
                    return value
            break
    caching_dir = adapter.get("caching_dir")
    return caching_dir if isinstance(caching_dir, str) and caching_dir else None


async def copy_store(src: Store, dst: Store, *, batch: int = 500) -> dict[str, int]:
    """Copy the compression dictionaries, then every answer (its bytes as stored: a damaged one is skipped), saved
    pair and failure of ``src`` into ``dst``, between a cache directory and a Redis store either way. Slot counters
    and leases belong to running runs and are not copied. Returns how many of each were copied."""
    copied = {"answers": 0, "skipped": 0, "saved_requests": 0, "failures": 0}
    dictionaries = await src.dictionaries()  # first: what the answers need to be decoded there
    await dst.put_dictionaries(dictionaries)
    table = dictionaries_of(dictionaries)
    async for chunk in src.raw_answers(batch):
        good = []
        for name, blob in chunk:
            try:
                StoredAnswer.decode(blob, table)
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


__all__ = ["Claim", "DiskStore", "Failure", "SavedPair", "Store", "StoreClosedError", "StoreError", "StoreFullError",
           "StoreReadOnlyError", "StoreUnavailableError", "StoredAnswer", "cache_key", "copy_store", "is_url",
           "open_store", "run_store"]
