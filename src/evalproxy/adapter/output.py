"""Files in the output directory: atomic writes, ``eval_factory_metrics.json``, the effective config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

log = logging.getLogger("evalproxy.output")

METRICS_FILE = "eval_factory_metrics.json"
CONFIG_FILE = "adapter_config.yaml"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dump_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


class MetricsFile:
    """``eval_factory_metrics.json``: one section per provider, written whole and atomically.

    Interceptors register a provider (a function returning their section) and call :meth:`touch` when their numbers
    changed; the server writes the file periodically in a thread and once more at shutdown, never per request.
    Sections already in the file from an earlier run that no provider owns are kept.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._providers: dict[str, Callable[[], Any]] = {}
        self._dirty = False
        self._lock = threading.Lock()

    def register(self, section: str, provider: Callable[[], Any]) -> None:
        self._providers[section] = provider

    def touch(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_now(self) -> None:
        """Collect every section and write the file (blocking: call it from a thread)."""
        with self._lock:
            self._dirty = False
            if not self._providers:
                return
            data = self.read()
            for section, provider in self._providers.items():
                try:
                    data[section] = provider()
                except Exception:
                    log.exception("statistics section %r could not be computed", section)
            atomic_write_bytes(self.path, dump_json(data))

    async def write(self) -> None:
        await asyncio.to_thread(self.write_now)


def write_effective_config(output_dir: Path, adapter: Any, server: Any) -> Path:
    """Write the config the run really uses, secrets redacted, to ``adapter_config.yaml``."""
    from evalproxy.adapter.redact import redact_obj

    doc = {
        "server": server.model_dump(mode="json"),
        "adapter_config": adapter.model_dump(mode="json"),
    }
    path = output_dir / CONFIG_FILE
    atomic_write_bytes(path, yaml.safe_dump(redact_obj(doc), sort_keys=False).encode())
    return path
