"""Reading config files of every shape NeMo Evaluator accepts into :class:`LoadedConfig`.

A config file (YAML or JSON) may be

* a bare adapter_config: ``{interceptors: [...], post_eval_hooks: [...], ...}``;
* a launcher config: ``{target: {api_endpoint: {url, model_id, api_key_name, type, adapter_config}}}``;
* either of them with legacy flat keys (``use_caching``, ``use_system_prompt``, ...) in place of ``interceptors``.

Any shape may carry a ``server:`` mapping with :class:`ServerConfig` fields. Errors name the file and the field path.
Names of interceptors and hooks are checked against the registry one layer up
(:func:`evalproxy.adapter.registry.resolve`), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from evalproxy.adapter.config.legacy import LEGACY_KEYS, convert_legacy
from evalproxy.adapter.config.schema import (
    AdapterConfig,
    InterceptorConfig,
    LoadedConfig,
    PostEvalHookConfig,
    ServerConfig,
    validation_error,
)
from evalproxy.adapter.core.errors import ConfigError

# Keys of a launcher config's api_endpoint that map onto ServerConfig.
_ENDPOINT_TO_SERVER = {"url": "upstream_url", "model_id": "model_id", "api_key_name": "api_key_name"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=str(p)) from exc
    try:
        data = orjson.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}", file=str(p)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, not {type(data).__name__}", file=str(p))
    return data


def merge_adapter_configs(shared: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """A launcher's ``global_adapter_config`` under a task's own: local fields win, discovery lists add up."""
    merged = {**shared, **local}
    g, lo = shared.get("discovery"), local.get("discovery")
    if isinstance(g, dict) and isinstance(lo, dict):
        merged["discovery"] = {k: [*(g.get(k) or []), *(lo.get(k) or [])] for k in ("modules", "dirs")}
    return merged


def parse_config(data: dict[str, Any], *, source: str | None = None) -> LoadedConfig:
    """Turn a config mapping of any accepted shape into an :class:`AdapterConfig` and :class:`ServerConfig`."""
    data = dict(data)
    server_data: dict[str, Any] = {}
    raw_server = data.pop("server", None) or {}
    if not isinstance(raw_server, dict):
        raise ConfigError("must be a mapping", field="server", file=source)

    prefix = ""
    adapter_data: Any
    if "target" in data:
        target = data.get("target")
        endpoint = target.get("api_endpoint") if isinstance(target, dict) else None
        if not isinstance(endpoint, dict):
            raise ConfigError("a launcher config needs a mapping here", field="target.api_endpoint", file=source)
        for k, v in _ENDPOINT_TO_SERVER.items():
            if endpoint.get(k) is not None:
                server_data[v] = endpoint[k]
        run_cfg = data.get("config")
        if isinstance(run_cfg, dict) and isinstance(run_cfg.get("output_dir"), str):
            server_data["output_dir"] = run_cfg["output_dir"]  # the run config's output dir, as NeMo uses it
        adapter_data = endpoint.get("adapter_config") or {}
        prefix = "target.api_endpoint.adapter_config"
        if endpoint.get("type") and isinstance(adapter_data, dict) and "endpoint_type" not in adapter_data:
            adapter_data = {**adapter_data, "endpoint_type": endpoint["type"]}  # the task's own type
        shared = data.get("global_adapter_config")
        if isinstance(shared, dict) and isinstance(adapter_data, dict):
            adapter_data = merge_adapter_configs(shared, adapter_data)
    elif "adapter_config" in data:
        adapter_data = data.get("adapter_config") or {}
        prefix = "adapter_config"
    else:
        adapter_data = data
    if not isinstance(adapter_data, dict):
        raise ConfigError("must be a mapping", field=prefix or None, file=source)

    server_data.update(raw_server)
    try:
        server = ServerConfig.model_validate(server_data)
    except ValidationError as exc:
        raise validation_error(exc, prefix="server", file=source) from None

    legacy = {k: adapter_data[k] for k in list(adapter_data) if k in LEGACY_KEYS}
    if legacy:
        adapter_data = {k: v for k, v in adapter_data.items() if k not in LEGACY_KEYS}
        if adapter_data.get("interceptors"):
            where = f"{prefix}." if prefix else ""
            raise ConfigError(
                f"legacy flat keys ({', '.join(sorted(legacy))}) cannot be mixed with an explicit 'interceptors' "
                "list; move their settings into the interceptors' config",
                field=f"{where}{sorted(legacy)[0]}",
                file=source,
            )
        adapter_data = convert_legacy(legacy, adapter_data, source=source, prefix=prefix)
    try:
        adapter = AdapterConfig.model_validate(adapter_data)
    except ValidationError as exc:
        raise validation_error(exc, prefix=prefix, file=source) from None
    if not adapter.interceptors:
        adapter = adapter.model_copy(update={"interceptors": default_interceptors(adapter)})
    if not adapter.post_eval_hooks and adapter.generate_html_report:
        adapter = adapter.model_copy(update={"post_eval_hooks": default_hooks(adapter)})
    return LoadedConfig(adapter=adapter, server=server, source=source, prefix=prefix)


def default_interceptors(adapter: AdapterConfig) -> list[InterceptorConfig]:
    """The chain used when a config names none: reasoning, caching, endpoint, response_stats."""
    caching: dict[str, Any] = {}
    if adapter.caching_dir:
        caching["cache_dir"] = adapter.caching_dir
    if adapter.generate_html_report:
        # The report shows saved pairs: save as many requests as it shows.
        caching["save_requests"] = True
        caching["max_saved_requests"] = adapter.html_report_size if adapter.html_report_size is not None else 5
    return [
        InterceptorConfig(name="reasoning"),
        InterceptorConfig(name="caching", config=caching),
        InterceptorConfig(name="endpoint"),
        InterceptorConfig(name="response_stats"),
    ]


def default_hooks(adapter: AdapterConfig) -> list[PostEvalHookConfig]:
    return [
        PostEvalHookConfig(
            name="post_eval_report",
            config={"report_types": ["html", "json"],
                    "html_report_size": 5 if adapter.html_report_size is None else adapter.html_report_size},
        )
    ]


def load_config(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read a config file (or none), apply server ``overrides`` (from the CLI: they win), validate the schema."""
    data = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else None
    loaded = parse_config(data, source=source)
    if overrides:
        clean = {k: v for k, v in overrides.items() if v is not None}
        try:
            loaded.server = ServerConfig.model_validate({**loaded.server.model_dump(exclude_unset=True), **clean})
        except ValidationError as exc:
            raise validation_error(exc, prefix="server", file="command line") from None
    return loaded
