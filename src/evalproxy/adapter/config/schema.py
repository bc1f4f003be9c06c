"""The config schema, compatible with NeMo Evaluator's ``adapter_config``, and the proxy's own server settings.

Models only: reading files and the shapes a file may take are in :mod:`evalproxy.adapter.config.files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evalproxy.adapter.core.errors import ConfigError

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

    def cache_dir(self, output_dir: str | os.PathLike[str], configured: str | os.PathLike[str] | None = None) -> Path:
        """Where a run's cache directory is: the caching interceptor's own ``cache_dir`` (``configured``), else the
        adapter's ``caching_dir``, else ``<output_dir>/cache``. The one answer for the interceptor, the workers of a
        ``serve`` and the report; relative paths are left for the caller to resolve."""
        return Path(configured or self.caching_dir or Path(output_dir) / "cache")


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
    progress_total: int | None = Field(default=None, ge=1, description="Answers the run is expected to ask for "
                                       "(the status line's total, percent and ETA); evalproxy run sets it")
    # -- what the proxy accepts (docs/security.md) ----------------------------------------------------------------
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (beyond the bound address and localhost) a request's Host may name; '*' any, "
                    "'.example.org' a domain and its subdomains")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) allowed to call the proxy, with CORS; '*' any")
    forward_paths: list[str] = Field(
        default_factory=list,
        description="Paths forwarded upstream beyond the OpenAI-compatible ones (glob patterns, e.g. /v2/*)")
    forward_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST"], description="HTTP methods forwarded upstream")
    max_json_depth: int = Field(default=100, ge=2, description="Deepest nesting a JSON request body may have")
    max_json_objects: int = Field(
        default=100_000, ge=100, description="Most JSON objects and arrays one request body may hold")
    max_answer_bytes: int = Field(
        default=256 * MiB, ge=1024, description="Largest upstream answer (a JSON body, or a stream in all)")
    max_sse_line_bytes: int = Field(default=16 * MiB, ge=1024, description="Longest line of an upstream stream")
    client_header_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a client has to send a request's headers (and to stay idle)")
    client_body_timeout: float = Field(default=300.0, gt=0, description="Seconds a client has to send a body")

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

    def secrets(self) -> list[str]:
        """The run's secret values (the upstream key, the admin token): every log and file redacts them wherever
        they appear, not only in fields named as secrets."""
        return [v for v in (self.api_key(), self.admin_token()) if v]


@dataclass
class LoadedConfig:
    adapter: AdapterConfig
    server: ServerConfig
    source: str | None = None
    prefix: str = ""
    """Where the adapter_config sat in the file (``target.api_endpoint.adapter_config``), for error paths."""
    default_chain: Literal["nemo", "evalproxy"] | None = None
    """Which default chain filled an empty ``interceptors``: NeMo Evaluator's (a file that lists none) or
    evalproxy's own (no config file at all). None: the config lists its interceptors."""
    task: str | None = None
    """The launcher task whose merged adapter config this is."""
    tasks: list[str] = field(default_factory=list)
    """The tasks a launcher file lists."""
    strict: bool = False
    """Unknown interceptor/hook params are errors rather than warnings (``--strict-config``)."""
    warnings: list[str] = field(default_factory=list)
    """What loading noticed and did not refuse (each also logged)."""
    shape: Literal["0.2.8", "0.4"] | None = None
    """Which NeMo Evaluator version the file is shaped as (a launcher file or legacy keys: 0.2.8; ``services:``,
    ``proxy:``, ``output:``: 0.4); None for a bare adapter config, which both read alike. A key whose meaning
    changed between versions means what it means in this one."""
    snapshot: dict[str, Any] | None = None
    """A 0.4 file as written (``${ENV}`` references unexpanded), kept in the run dir as 0.4 keeps its config."""
    sections: dict[str, Any] = field(default_factory=dict)
    """Top-level sections the proxy itself does not read, kept for the run around it: ``export`` and a launcher
    file's ``execution`` (auto-export: :mod:`evalproxy.records.auto_export`)."""
    run_params: dict[str, Any] = field(default_factory=dict)
    """A launcher (or nemo-evaluator run) config's ``config.params`` for the task: what the harness is to be given."""



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

