"""Files the running proxy writes to the output directory: ``eval_factory_metrics.json`` and the effective config."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import yaml

from evalproxy.adapter.config.schema import AdapterConfig, ServerConfig
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.core.loads import load_json, read_bounded
from evalproxy.adapter.core.redact import redact_obj, redact_url
from evalproxy.adapter.flow.run import PersistedStats, RunFile, Statistics, StatsSnapshot

log = logging.getLogger("evalproxy.output")

STATISTICS_FILE = "eval_factory_metrics.json"
"""NeMo Evaluator's name for the statistics file (it says "metrics"; evalproxy calls its contents statistics)."""
CONFIG_FILE = "adapter_config.yaml"
RESULTS_FILES = ("results.yaml", "results.yml")
"""The run record's name (written by ``evalproxy run``), and NeMo Evaluator's, read as well."""


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when it is missing, unreadable, too large or too deep (a run dir's
    statistics file is read as every JSON a run dir holds: :mod:`evalproxy.adapter.core.loads`)."""
    try:
        data = load_json(read_bounded(path), source=str(path))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StatisticsFile:
    """``eval_factory_metrics.json`` and the sections' per-run files: the run's one statistics writer.

    :meth:`write` takes a snapshot of every :class:`Statistics` section on the event loop, then writes the sections'
    own files and the statistics file, whole and atomically, in a thread; writes never overlap, and a later snapshot
    is never overwritten by an earlier one. Sections already in the file that no unit of this run owns (from an
    earlier run) are kept.
    """

    def __init__(self, path: Path, statistics: Statistics) -> None:
        self.path = path
        self.statistics = statistics
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None

    async def write(self) -> None:
        """Snapshot every section now and write them (the file I/O in a thread)."""
        async with self._lock:
            if self._writing is not None:
                # A write whose waiter was cancelled (shutdown) may still be running in its thread: it ends first.
                await asyncio.wait([self._writing])
            taken = self.statistics.snapshot()
            if not taken:
                return
            self._writing = asyncio.ensure_future(asyncio.to_thread(self.write_now, taken))
            await asyncio.shield(self._writing)

    def write_now(self, taken: dict[str, StatsSnapshot]) -> None:
        """Write the sections' files, then the statistics file with every section (blocking: call it from a thread).
        A section whose own files cannot be written is logged and still reported."""
        sections: dict[str, Any] = {}
        for name, snap in taken.items():
            try:
                for f in snap.files():
                    _write_run_file(f)
            except OSError as exc:
                log.warning("cannot persist the %s statistics of this run: %s", name, exc)
            try:
                sections[name] = snap.section()
            except Exception:
                log.exception("statistics section %r could not be computed", name)
        if not sections:
            return
        data = read_json_file(self.path)
        data.update(sections)
        atomic_write_bytes(self.path, dump_json(data))


def _write_run_file(f: RunFile) -> None:
    if not f.append:
        atomic_write_bytes(f.path, f.data)
        return
    # Appended whole lines at a time; a crash can at worst cut the last line, which readers skip.
    f.path.parent.mkdir(parents=True, exist_ok=True)
    with f.path.open("ab") as out:
        out.write(f.data)


def server_doc(server: ServerConfig) -> dict[str, Any]:
    """The server settings as an effective config shows them (the upstream URL's password redacted; secret-named
    fields are left to :func:`~evalproxy.adapter.core.redact.redact_obj` over the whole document)."""
    doc = server.model_dump(mode="json")
    doc["upstream_url"] = redact_url(server.upstream_url)
    return doc


def write_effective_config(output_dir: Path, adapter: AdapterConfig, server: ServerConfig) -> Path:
    """Write the config the run really uses, secrets redacted, to ``adapter_config.yaml``."""
    doc = {"server": server_doc(server), "adapter_config": adapter.model_dump(mode="json")}
    path = output_dir / CONFIG_FILE
    atomic_write_bytes(path, yaml.safe_dump(redact_obj(doc), sort_keys=False).encode())
    return path


def merge_statistics(output_dirs: list[Path], interceptors: list[tuple[type[Any], Any]]) -> dict[str, Any]:
    """One ``eval_factory_metrics.json`` for proxies that served one run (workers, or proxies on several machines),
    from their output dirs.

    A unit class that is a :class:`PersistedStats` has its section merged exactly by its ``merged_section``
    (response_stats: counts, sums and percentiles over every sample kept; reasoning: its sums). Other sections are
    merged field by field: integers (at any depth) summed, other values kept where every proxy agrees.
    """
    present = [d for d in (read_json_file(p / STATISTICS_FILE) for p in output_dirs) if d]
    merged = _merge(present) if present else {}
    assert isinstance(merged, dict)
    for cls, params in interceptors:
        if isinstance(cls, type) and issubclass(cls, PersistedStats):
            section = cls.merged_section(params, output_dirs)
            if section is not None:
                merged[cls.stats_section] = section
    if isinstance(merged.get("caching"), dict):  # a ratio does not add up: computed again from the sums
        c = merged["caching"]
        lookups = int(c.get("hits", 0)) + int(c.get("misses", 0))
        c["hit_ratio"] = c.get("hits", 0) / lookups if lookups else 0.0
    return merged


_DROP = object()


def _merge(values: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in values):
        out = {}
        for k in dict.fromkeys(k for v in values for k in v):
            m = _merge([v[k] for v in values if k in v])
            if m is not _DROP:
                out[k] = m
        return out
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    first = orjson.dumps(values[0], option=orjson.OPT_SORT_KEYS)
    return values[0] if all(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) == first for v in values) else _DROP
