"""A run's identity and its end: the run context a proxy (or a parent of workers) serves, and the post-eval hooks.

Used alike by the single-process proxy and by ``serve --workers``, whose parent runs the hooks once after every
worker stopped: neither builds the other's machinery to get at them.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from evalproxy.adapter.config.schema import AdapterConfig, LoadedConfig
from evalproxy.adapter.core.net import is_store_url
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.server.prometheus import Prometheus

log = logging.getLogger("evalproxy.server")

# Config params that name a place on disk: made absolute at start, so a report rendered later from another working
# directory finds the same files.
_PATH_PARAMS = ("cache_dir", "output_dir")


def new_run_id() -> str:
    """A run id that sorts by start time (UTC, so it sorts across DST changes and machines)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def absolute_paths(adapter: AdapterConfig, base: Path) -> AdapterConfig:
    """``adapter`` with relative ``caching_dir`` and interceptor ``cache_dir`` / ``output_dir`` made absolute."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not is_store_url(value):
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())
        return value

    interceptors = [
        ic.model_copy(update={"config": {k: fix(v) if k in _PATH_PARAMS else v for k, v in ic.config.items()}})
        for ic in adapter.interceptors
    ]
    return adapter.model_copy(update={"caching_dir": fix(adapter.caching_dir), "interceptors": interceptors})


def open_run(loaded: LoadedConfig, run_id: str | None = None, prometheus: Prometheus | None = None) -> RunContext:
    """The run ``loaded`` describes, its paths made absolute against the working directory."""
    cwd = Path.cwd()
    server = loaded.server.model_copy(update={"output_dir": str((cwd / loaded.server.output_dir).resolve())})
    return RunContext(output_dir=Path(server.output_dir), run_id=run_id or new_run_id(),
                      config=absolute_paths(loaded.adapter, cwd), server=server,
                      prometheus=prometheus or Prometheus())


async def run_hooks(hooks: list[tuple[type[Any], Any]], run: RunContext) -> list[dict[str, Any]]:
    """Run each post-eval hook once, in order; a hook's failure is logged and reported, never raised."""
    results = []
    for cls, params in hooks:
        t0 = time.perf_counter()
        try:
            await cls(params, run)()
            results.append({"name": cls.name, "ok": True, "seconds": round(time.perf_counter() - t0, 3)})
        except Exception as exc:
            log.exception("post-eval hook '%s' failed", cls.name)
            results.append({"name": cls.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return results
