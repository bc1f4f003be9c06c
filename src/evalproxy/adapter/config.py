"""The config schema, compatible with NeMo Evaluator's ``adapter_config``, and how files are read.

A config file (YAML or JSON) may be

* a bare adapter_config: ``{interceptors: [...], post_eval_hooks: [...], ...}``;
* a launcher config: ``{target: {api_endpoint: {url, model_id, api_key_name, type, adapter_config}}}``;
* either of them with legacy flat keys (``use_caching``, ``use_system_prompt``, ...) in place of ``interceptors``.

Any shape may carry a ``server:`` mapping with :class:`ServerConfig` fields. Errors name the file and the field path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evalproxy.adapter.errors import ConfigError

DEFAULT_PORT = 3825
MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginConfig(_Strict):
    """One entry of ``interceptors`` or ``post_eval_hooks``; a bare string means ``{name: that}``."""

    name: str
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and data.get("config") is None and "config" in data:
            return {**data, "config": {}}
        return data


class InterceptorConfig(PluginConfig):
    pass


class PostEvalHookConfig(PluginConfig):
    pass


class DiscoveryConfig(_Strict):
    modules: list[str] = Field(default_factory=list)
    dirs: list[str] = Field(default_factory=list)


class AdapterConfig(_Strict):
    """NeMo Evaluator's ``adapter_config``: the chain, the hooks and a few run-wide settings."""

    mode: Literal["server", "client"] = "server"
    """Accepted as newer NeMo Evaluator configs write it; evalproxy is always a server."""
    interceptors: list[InterceptorConfig] = Field(default_factory=list)
    post_eval_hooks: list[PostEvalHookConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    endpoint_type: str = "chat"
    caching_dir: str | None = None
    generate_html_report: bool = True
    html_report_size: int | None = Field(default=5, ge=0)
    log_failed_requests: bool = False
    tracking_requests_stats: bool = True

    def enabled_interceptors(self) -> list[tuple[int, InterceptorConfig]]:
        return [(i, ic) for i, ic in enumerate(self.interceptors) if ic.enabled]

    def enabled_hooks(self) -> list[tuple[int, PostEvalHookConfig]]:
        return [(i, h) for i, h in enumerate(self.post_eval_hooks) if h.enabled]

    def interceptor_config(self, name: str) -> dict[str, Any] | None:
        """The config of the first enabled interceptor called ``name``, or None."""
        for _, ic in self.enabled_interceptors():
            if ic.name == name:
                return ic.config
        return None


class ServerConfig(_Strict):
    """How the proxy itself runs. Set in the file's ``server:`` mapping or on the command line (which wins)."""

    upstream_url: str | None = None
    model_id: str | None = None
    api_key_name: str | None = Field(default=None, description="Name of the env var holding the upstream API key")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    output_dir: str = "evalproxy_output"
    request_timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    retry_backoff: float = Field(default=0.5, ge=0, description="First retry delay in seconds; doubles per try")
    retry_max_backoff: float = Field(default=30.0, ge=0)
    retry_on_status: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])
    max_concurrent_requests: int = Field(default=512, ge=1, description="Upstream connection limit")
    max_request_bytes: int = Field(default=64 * MiB, ge=1024)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    admin_token_name: str | None = Field(
        default=None, description="Env var holding a token that admin paths (/adapterserver/*) require"
    )
    status_line: Literal["auto", "tty", "log", "off"] = "auto"
    status_interval: float = Field(default=10.0, gt=0)

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    def api_key(self) -> str | None:
        """The upstream API key, read from the env var ``api_key_name`` names (never stored in config)."""
        if not self.api_key_name:
            return None
        return os.environ.get(self.api_key_name) or None

    def admin_token(self) -> str | None:
        if not self.admin_token_name:
            return None
        return os.environ.get(self.admin_token_name) or None


@dataclass
class LoadedConfig:
    adapter: AdapterConfig
    server: ServerConfig
    source: str | None = None
    prefix: str = ""
    """Where the adapter_config sat in the file (``target.api_endpoint.adapter_config``), for error paths."""


# Keys of a launcher config's api_endpoint that map onto ServerConfig.
_ENDPOINT_TO_SERVER = {"url": "upstream_url", "model_id": "model_id", "api_key_name": "api_key_name"}


def format_loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(exc: ValidationError, *, prefix: str = "", file: str | None = None) -> ConfigError:
    """The first problem of a pydantic error as a ConfigError naming the field path (all problems in the text)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field_path = format_loc(tuple(first["loc"]), prefix)
    lines = [f"{format_loc(tuple(e['loc']), prefix) or '(top level)'}: {e['msg']}" for e in errors]
    message = first["msg"] if len(lines) == 1 else first["msg"] + "; all problems:\n  " + "\n  ".join(lines)
    return ConfigError(message, field=field_path or None, file=file)


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
    from evalproxy.adapter.legacy import LEGACY_KEYS, convert_legacy

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
    """Read a config file (or none), apply server ``overrides`` (from the CLI: they win), validate everything."""
    data = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else None
    loaded = parse_config(data, source=source)
    if overrides:
        clean = {k: v for k, v in overrides.items() if v is not None}
        try:
            loaded.server = ServerConfig.model_validate({**loaded.server.model_dump(exclude_unset=True), **clean})
        except ValidationError as exc:
            raise validation_error(exc, prefix="server", file="command line") from None
    validate_plugins(loaded)
    return loaded


def validate_plugins(loaded: LoadedConfig) -> None:
    """Check names, params and order of interceptors and hooks against the registry (discovery included)."""
    from evalproxy.adapter.registry import Registry

    adapter = loaded.adapter
    try:
        registry = Registry.default(adapter.discovery.modules, adapter.discovery.dirs)
        resolve_interceptors(adapter, registry, prefix=loaded.prefix, file=loaded.source)
        resolve_hooks(adapter, registry, prefix=loaded.prefix, file=loaded.source)
    except ConfigError as exc:
        if exc.file is None and loaded.source is not None:
            field = exc.field
            if field and field.startswith("discovery") and loaded.prefix:
                field = f"{loaded.prefix}.{field}"
            raise ConfigError(exc.reason, field=field, file=loaded.source) from None
        raise


def _params(cls: type[Any], config: dict[str, Any], field_path: str, file: str | None) -> Any:
    try:
        return cls.Params.model_validate(config)
    except ValidationError as exc:
        err = validation_error(exc, prefix=field_path, file=file)
        raise ConfigError(f"{cls.name}: {err.reason}", field=err.field, file=file) from None


def resolve_interceptors(
    adapter: AdapterConfig, registry: Any, *, prefix: str = "", file: str | None = None
) -> list[tuple[type[Any], Any]]:
    """(class, validated params) for each enabled interceptor, ``endpoint`` included, in config order."""
    from evalproxy.adapter.chain import check_order

    p = f"{prefix}." if prefix else ""
    out: list[tuple[type[Any], Any]] = []
    for i, ic in adapter.enabled_interceptors():
        cls = registry.interceptor(ic.name, field_path=f"{p}interceptors[{i}].name")
        out.append((cls, _params(cls, ic.config, f"{p}interceptors[{i}].config", file)))
    names = [cls.name for cls, _ in out]
    try:
        check_order(names, {cls.name: cls for cls, _ in out})
    except ConfigError as exc:
        raise ConfigError(exc.reason, field=f"{p}interceptors", file=file) from None
    return out


def resolve_hooks(
    adapter: AdapterConfig, registry: Any, *, prefix: str = "", file: str | None = None
) -> list[tuple[type[Any], Any]]:
    p = f"{prefix}." if prefix else ""
    out = []
    for i, h in adapter.enabled_hooks():
        cls = registry.hook(h.name, field_path=f"{p}post_eval_hooks[{i}].name")
        out.append((cls, _params(cls, h.config, f"{p}post_eval_hooks[{i}].config", file)))
    return out
