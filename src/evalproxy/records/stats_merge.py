"""``evalproxy stats merge``: one ``eval_factory_metrics.json`` for proxies that served one run (other machines,
workers), from their output dirs and the run's effective config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evalproxy.adapter.config import AdapterConfig
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.adapter.registry.registry import Registry, resolve_interceptors
from evalproxy.adapter.server.output import CONFIG_FILE, STATISTICS_FILE, merge_statistics

log = logging.getLogger("evalproxy")  # the command line's logger: its lines read as they always have


def merge_run_statistics(dirs: list[Path], out: Path, config_file: Path | None = None) -> Path:
    """Merge the statistics of ``dirs`` into ``out``/eval_factory_metrics.json (its path), with ``merged_from``
    naming them. ``config_file`` (default: the first dir's adapter_config.yaml) says which interceptors made them."""
    config_file = config_file if config_file is not None else dirs[0] / CONFIG_FILE
    doc = read_yaml(config_file) if config_file.is_file() else {}
    merged = merge_statistics(dirs, builtin_interceptors(doc, str(config_file)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / STATISTICS_FILE, dump_json({**merged, "merged_from": [str(d) for d in dirs]}))
    return out / STATISTICS_FILE


def builtin_interceptors(doc: Any, source: str) -> list[tuple[type[Any], Any]]:
    """The interceptors an effective config names that are evalproxy's own or an installed package's, with their
    params: what ``stats merge`` needs. Its ``discovery`` is ignored and nothing it names is imported: a file read is
    never a reason to run code. Units it names that are not known so are merged field by field (a warning says so)."""
    adapter_doc = doc.get("adapter_config") if isinstance(doc, dict) else None
    if not isinstance(adapter_doc, dict):
        return []
    try:
        adapter = AdapterConfig.model_validate({k: v for k, v in adapter_doc.items() if k != "discovery"})
    except ValueError as exc:
        log.warning("%s: not a usable adapter config, statistics merged field by field: %s", source, exc)
        return []
    registry = Registry.default()  # built-ins and installed packages' entry points, never ``discovery``
    known = []
    for ic in adapter.interceptors:
        try:
            registry.interceptor(ic.name)
            known.append(ic)
        except ConfigError:
            log.warning("%s: interceptor '%s' is not evalproxy's own nor installed: its statistics are merged field "
                        "by field", source, ic.name)
    try:
        return resolve_interceptors(adapter.model_copy(update={"interceptors": known}), registry, file=source)
    except ConfigError as exc:
        log.warning("%s: statistics merged field by field: %s", source, exc)
        return []
