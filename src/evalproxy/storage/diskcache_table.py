"""Every use evalproxy makes of diskcache's internals, in one place: its per-thread SQLite connection and the rows of
its ``Cache`` table.

Relies on the schema of **diskcache 5.6** (``diskcache/core.py``: table ``Cache`` with columns ``rowid, key, raw,
store_time, expire_time, access_time, access_count, tag, size, mode, filename, value``; ``MODE_RAW == 1``; the
connection of the calling thread behind ``Cache._con``); pyproject.toml pins ``diskcache>=5.6,<5.7`` to what
``tests/storage/test_disk.py::TestDiskcacheTable`` (and ``TestCacheStore``) prove: diskcache reads every row
written here and this reads every entry diskcache wrote. Widen the pin only after those tests pass on the new
version.

Why not ``Cache.get`` / ``Cache.set``: an answer is read and written with one SQL statement each, in the row format
diskcache itself uses for a ``str`` key and a ``bytes`` value kept inline (``raw = 1``, ``mode = MODE_RAW``, ``size =
0``, no file), at a third of the Python per call. What that format cannot hold is left to diskcache: a value large
enough to live in a file of its own (``>= disk_min_file_size``), and the replacement of an existing entry (whose old
file must go). No eviction, tags or statistics are used (the store opens its caches with ``eviction_policy='none'``
and ``statistics=False``), so the columns they maintain need no care.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import diskcache

from evalproxy.storage.base import now

MODE_RAW: int = diskcache.core.MODE_RAW
_SELECT = ("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
           " AND (expire_time IS NULL OR expire_time > ?)")
_SELECT_MANY = ("SELECT key, mode, filename, value FROM Cache WHERE key IN ({}) AND raw = 1"
                " AND (expire_time IS NULL OR expire_time > ?)")
_MANY = 256
"""Names per statement of :meth:`DiskcacheTable.get_many` (well under SQLite's limit of bound parameters)."""
_INSERT = ("INSERT OR IGNORE INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag,"
           " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)")


class DiskcacheTable:
    """The rows of one ``diskcache.Cache`` (str keys, bytes values), read and written by SQL where that is faster."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self.cache = cache
        self.inline_limit: int = cache.disk_min_file_size
        """A value this long or longer is a file of diskcache's own: written through ``Cache.set``."""

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection to the cache's database (diskcache opens one per thread)."""
        con: sqlite3.Connection = self.cache._con
        return con

    def get(self, name: str) -> Any:
        """The value stored under ``name``, None if none: our rows are bytes (inline, or through diskcache for a value
        it keeps in a file); an entry some other writer left under the name comes back as diskcache reads it."""
        row = self.db.execute(_SELECT, (name, now())).fetchone()
        return None if row is None else self._value(name, *row)

    def _value(self, name: str, mode: int, filename: str | None, value: Any) -> Any:
        """A row's value: our own bytes as they are, anything else (a file of diskcache's) as diskcache reads it."""
        return value if mode == MODE_RAW and filename is None else self.cache.get(name)

    def get_many(self, names: list[str]) -> dict[str, Any]:
        """The values stored under ``names`` (those found), as :meth:`get` reads each, with one statement per
        ``_MANY`` names: a batch of look-ups releases and takes back the interpreter once per row, not twice per
        name."""
        found: dict[str, Any] = {}
        for i in range(0, len(names), _MANY):
            chunk = names[i : i + _MANY]
            rows = self.db.execute(_SELECT_MANY.format(",".join("?" * len(chunk))), (*chunk, now())).fetchall()
            for name, *row in rows:
                found[name] = self._value(name, *row)
        return found

    def put(self, name: str, blob: bytes) -> None:
        """Store ``blob`` under ``name``: one statement for a new small value, diskcache's own ``set`` otherwise."""
        if len(blob) < self.inline_limit:
            t = now()
            if self.db.execute(_INSERT, (name, t, t, blob)).rowcount == 1:
                return
        self.cache.set(name, blob)
