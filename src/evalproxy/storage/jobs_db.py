"""The service's state in one SQLite file: targets, configs, jobs and their results.

Every method is synchronous and short; the app calls them through ``asyncio.to_thread`` so the event loop never
waits on the disk. One connection, guarded by a lock, in autocommit mode with WAL (readers never block the writer).
Each row keeps the public record as JSON; the columns beside it exist to filter and sort.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from evalproxy.adapter.core.errors import JobsBadRequestError, JobsConflictError

Kind = Literal["targets", "configs"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, name TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, data TEXT NOT NULL, UNIQUE (namespace, name));
CREATE TABLE IF NOT EXISTS configs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, name TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, data TEXT NOT NULL, UNIQUE (namespace, name));
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL,
    status TEXT NOT NULL, target_ref TEXT, config_ref TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    data TEXT NOT NULL, results TEXT, pid INTEGER, slurm_id INTEGER, ticket_hash TEXT);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""

_ADDED_COLUMNS = {"slurm_id": "INTEGER", "ticket_hash": "TEXT"}
"""Columns added to ``jobs`` after its first version: a database written before gets them when it is opened."""

_SORTABLE = {"targets": ("created_at", "updated_at", "namespace", "name"),
             "configs": ("created_at", "updated_at", "namespace", "name"),
             "jobs": ("created_at", "updated_at", "namespace", "status", "id")}
_FILTERABLE = {"targets": ("namespace", "name"), "configs": ("namespace", "name"),
               "jobs": ("status", "namespace", "target_ref", "config_ref")}


@dataclass(frozen=True)
class Page:
    """One page of a listing: the records and the number of records all pages hold."""

    items: list[dict[str, Any]]
    total: int


def order_by(table: str, sort: str) -> str:
    """``-created_at`` -> ``created_at DESC, seq DESC``; the insertion order breaks ties."""
    desc = sort.startswith("-")
    column = sort.lstrip("-+")
    if column not in _SORTABLE[table]:
        raise JobsBadRequestError(f"sort: cannot sort by '{column}' (one of {', '.join(_SORTABLE[table])}, "
                              "with '-' for descending)", field="sort")
    direction = "DESC" if desc else "ASC"
    return f"{column} {direction}, seq {direction}"


class JobsDB:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # targets and configs

    def add_resource(self, kind: Kind, record: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._conn.execute(
                    f"INSERT INTO {kind} (namespace, name, created_at, updated_at, data) VALUES (?, ?, ?, ?, ?)",
                    (record["namespace"], record["name"], record["created_at"], record["updated_at"],
                     orjson.dumps(record)),
                )
            except sqlite3.IntegrityError:
                raise JobsConflictError(f"name: {kind[:-1]} '{record['namespace']}/{record['name']}' already exists",
                                    field="name") from None

    def get_resource(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(f"SELECT data FROM {kind} WHERE namespace = ? AND name = ?",
                                     (namespace, name)).fetchone()
        return None if row is None else _loads(row[0])

    def delete_resource(self, kind: Kind, namespace: str, name: str) -> bool:
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM {kind} WHERE namespace = ? AND name = ?", (namespace, name))
        return cur.rowcount > 0

    # jobs

    def add_job(self, record: dict[str, Any], *, target_ref: str | None, config_ref: str | None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO jobs (id, namespace, status, target_ref, config_ref, created_at, updated_at, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record["id"], record["namespace"], record["status"], target_ref, config_ref, record["created_at"],
                 record["updated_at"], orjson.dumps(record)),
            )

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _loads(row[0])

    def update_job(self, job_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Merge ``changes`` into the job's record (``updated_at`` must be among them); the new record, or None."""
        with self._lock:
            row = self._conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            record = {**_loads(row[0]), **changes}
            self._conn.execute("UPDATE jobs SET status = ?, updated_at = ?, data = ? WHERE id = ?",
                               (record["status"], record["updated_at"], orjson.dumps(record), job_id))
        return record

    def set_pid(self, job_id: str, pid: int | None) -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def set_slurm_id(self, job_id: str, slurm_id: int | None) -> None:
        """The id Slurm gave the job (``sbatch --parsable``): a restarted service watches it again by that id."""
        with self._lock:
            self._conn.execute("UPDATE jobs SET slurm_id = ? WHERE id = ?", (slurm_id, job_id))

    def get_slurm_id(self, job_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT slurm_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def set_ticket_hash(self, job_id: str, digest: str | None) -> None:
        """The SHA-256 of the ticket a job on a cluster fetches its secrets with (never the ticket itself)."""
        with self._lock:
            self._conn.execute("UPDATE jobs SET ticket_hash = ? WHERE id = ?", (digest, job_id))

    def get_ticket(self, job_id: str) -> tuple[str, str | None] | None:
        """(status, ticket hash) of a job, or None when there is no such job."""
        with self._lock:
            row = self._conn.execute("SELECT status, ticket_hash FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def set_results(self, job_id: str, results: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET results = ? WHERE id = ?", (orjson.dumps(results), job_id))

    def get_results(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT results FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else _loads(row[0])

    def delete_job(self, job_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return cur.rowcount > 0

    def jobs_in(self, statuses: Iterable[str]) -> list[tuple[dict[str, Any], int | None, int | None]]:
        """(record, pid, Slurm id) of every job whose status is one of ``statuses``, oldest first."""
        wanted = list(statuses)
        marks = ", ".join("?" for _ in wanted)
        with self._lock:
            rows = self._conn.execute(f"SELECT data, pid, slurm_id FROM jobs WHERE status IN ({marks}) ORDER BY seq",
                                      wanted).fetchall()
        return [(_loads(data), pid, slurm_id) for data, pid, slurm_id in rows]

    # listings

    def list(self, table: str, *, filters: dict[str, str], sort: str, page: int, page_size: int) -> Page:
        where, args = [], []
        for column, value in filters.items():
            if column not in _FILTERABLE[table]:
                raise JobsBadRequestError(f"filter: cannot filter by '{column}'", field=f"filter[{column}]")
            where.append(f"{column} = ?")
            args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM {table}{clause}", args).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT data FROM {table}{clause} ORDER BY {order_by(table, sort)} LIMIT ? OFFSET ?",
                [*args, page_size, (page - 1) * page_size],
            ).fetchall()
        return Page(items=[_loads(r[0]) for r in rows], total=total)


def _loads(raw: str | bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data
