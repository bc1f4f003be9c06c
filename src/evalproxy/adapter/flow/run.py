"""One run of the proxy: what every interceptor and hook is handed at construction."""

from __future__ import annotations

import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from evalproxy.adapter.config.schema import AdapterConfig, ServerConfig

if TYPE_CHECKING:
    from evalproxy.adapter.server.prometheus import Prometheus

log = logging.getLogger("evalproxy.statistics")


@dataclass(frozen=True)
class RunFile:
    """A file a statistics section keeps of its run: written whole (atomically), or appended to."""

    path: Path
    data: bytes
    append: bool = False


class StatsSnapshot(Protocol):
    """One section's numbers, copied on the event loop: the statistics writer, in its thread, writes :meth:`files`
    and puts :meth:`section` in ``eval_factory_metrics.json``. Both only compute: the writer does the I/O."""

    def files(self) -> list[RunFile]: ...

    def section(self) -> dict[str, Any]: ...


class PersistedStats(ABC):
    """A unit whose statistics section is kept per run in files of its own, so that a resumed run and several proxies
    serving one run (``serve --workers N``, proxies started with one ``--run-id``) add up exactly.

    Declared by subclassing (a class declares it; nothing is found by attribute lookup): the server takes a
    :meth:`snapshot` on the event loop at each write (cheap: counters copied, no I/O), and merging proxies' output
    dirs calls :meth:`merged_section` on the classes of the configured units.
    """

    stats_section: ClassVar[str]
    """The section's key in ``eval_factory_metrics.json``."""

    @abstractmethod
    def snapshot(self) -> StatsSnapshot:
        """This run's numbers as they are now (on the event loop; must be quick: copy, never compute or write)."""

    @classmethod
    @abstractmethod
    def merged_section(cls, params: Any, output_dirs: list[Path]) -> dict[str, Any] | None:
        """The section over the per-run files several proxies wrote in ``output_dirs`` (blocking: reads files), or
        None when there are none."""


class _Plain:
    """A section that is its own snapshot (a few counters, built on the loop); no files of its own."""

    def __init__(self, section: dict[str, Any]) -> None:
        self._section = section

    def files(self) -> list[RunFile]:
        return []

    def section(self) -> dict[str, Any]:
        return self._section


class Statistics:
    """The sections of ``eval_factory_metrics.json``, as data: each unit hands over a snapshot when asked.

    Units :meth:`register` a plain section (a function building it from a few counters) or :meth:`persist` a
    :class:`PersistedStats`, and :meth:`touch` when their numbers changed. The server's statistics writer takes a
    :meth:`snapshot` of every section on the event loop, periodically and at shutdown, and writes it in a thread:
    never per request, and no unit's numbers are read off the loop.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], StatsSnapshot]] = {}
        self._dirty = False
        self.wake: Callable[[], None] | None = None
        """Set by the writer: asks it to write now rather than at its next tick."""

    def register(self, section: str, provider: Callable[[], dict[str, Any]]) -> None:
        """A section built whole by ``provider`` on the event loop (it must be quick)."""
        self._sources[section] = lambda: _Plain(provider())

    def persist(self, unit: PersistedStats) -> None:
        """A section kept per run in the unit's own files (see :class:`PersistedStats`)."""
        self._sources[unit.stats_section] = unit.snapshot

    def touch(self) -> None:
        self._dirty = True

    def write_soon(self) -> None:
        """Ask for the file to be written now (in the background; never two writes at once)."""
        self._dirty = True
        if self.wake is not None:
            self.wake()

    @property
    def dirty(self) -> bool:
        return self._dirty

    def snapshot(self) -> dict[str, StatsSnapshot]:
        """Every section as it is now (on the event loop); a unit that fails is logged and its section left out."""
        self._dirty = False
        out: dict[str, StatsSnapshot] = {}
        for section, source in self._sources.items():
            try:
                out[section] = source()
            except Exception:
                log.exception("statistics section %r could not be taken", section)
        return out


@dataclass
class RunContext:
    """One run of the proxy: where outputs go and what every component may share.

    Built once by the server at start-up and handed to every interceptor and hook constructor.
    """

    output_dir: Path
    run_id: str
    config: AdapterConfig
    server: ServerConfig
    prometheus: Prometheus
    statistics: Statistics = field(default_factory=Statistics)
    started_at: float = field(default_factory=time.time)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def next_request_id(self) -> int:
        """Arrival order of requests in this run, starting at 0."""
        return next(self._seq)

    def resolve(self, path: str | Path) -> Path:
        """A path from the config: relative ones are taken from where the proxy started, once, at start-up."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path.cwd() / p).resolve()
