"""Files the running proxy writes to the output directory: ``eval_factory_metrics.json`` and the effective config."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import orjson
import yaml

from evalproxy.adapter.config.schema import AdapterConfig, ServerConfig
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.core.redact import redact_obj, redact_url
from evalproxy.adapter.flow.run import Statistics

log = logging.getLogger("evalproxy.output")

STATISTICS_FILE = "eval_factory_metrics.json"
"""NeMo Evaluator's name for the statistics file (it says "metrics"; evalproxy calls its contents statistics)."""
CONFIG_FILE = "adapter_config.yaml"


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class StatisticsFile:
    """``eval_factory_metrics.json``: the run's :class:`Statistics` sections, written whole and atomically.

    Sections already in the file that no provider of this run owns (from an earlier run) are kept.
    """

    def __init__(self, path: Path, statistics: Statistics) -> None:
        self.path = path
        self.statistics = statistics
        self._lock = threading.Lock()

    def write_now(self) -> None:
        """Collect every section and write the file (blocking: call it from a thread)."""
        with self._lock:
            sections = self.statistics.collect()
            if not sections:
                return
            data = read_json_file(self.path)
            data.update(sections)
            atomic_write_bytes(self.path, dump_json(data))

    async def write(self) -> None:
        await asyncio.to_thread(self.write_now)


def write_effective_config(output_dir: Path, adapter: AdapterConfig, server: ServerConfig) -> Path:
    """Write the config the run really uses, secrets redacted, to ``adapter_config.yaml``."""
    server_doc = server.model_dump(mode="json")
    server_doc["upstream_url"] = redact_url(server.upstream_url)
    doc = {"server": server_doc, "adapter_config": adapter.model_dump(mode="json")}
    path = output_dir / CONFIG_FILE
    atomic_write_bytes(path, yaml.safe_dump(redact_obj(doc), sort_keys=False).encode())
    return path
