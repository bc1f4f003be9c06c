"""One run of the proxy: what every interceptor and hook is handed at construction."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalproxy.adapter.config.schema import AdapterConfig, ServerConfig

if TYPE_CHECKING:
    from evalproxy.adapter.server.prometheus import Prometheus

log = logging.getLogger("evalproxy.statistics")


class Statistics:
    """The sections of ``eval_factory_metrics.json``: one provider per section, collected when the file is written.

    Interceptors :meth:`register` a provider (a function returning their section) and :meth:`touch` when their
    numbers changed; the server writes the file periodically and at shutdown, in a thread, never per request.
    """

    def __init__(self) -> None:
        self._providers: dict[str, Callable[[], Any]] = {}
        self._dirty = False
        self.wake: Callable[[], None] | None = None
        """Set by the writer: asks it to write now rather than at its next tick."""

    def register(self, section: str, provider: Callable[[], Any]) -> None:
        self._providers[section] = provider

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

    def collect(self) -> dict[str, Any]:
        """Every section as it is now; a provider that fails is logged and its section left out."""
        self._dirty = False
        out: dict[str, Any] = {}
        for section, provider in self._providers.items():
            try:
                out[section] = provider()
            except Exception:
                log.exception("statistics section %r could not be computed", section)
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
