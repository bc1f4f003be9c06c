"""Targets, configs and job requests as the API reads them (NeMo Evaluator's field names), and the command's
placeholders.

A target is a model endpoint: ``api_endpoint {url, model_id, api_key_name, type, adapter_config}``. The key itself is
never part of it: ``api_key_name`` names the environment variable of the service that holds it. A config is what to
run: the harness ``command`` (an argument list), its ``params`` and an optional ``adapter_config`` that overrides the
target's field by field.

Placeholders in the command: ``{model_id}``, ``{output_dir}`` (the job's directory), ``{params.NAME}`` and
``{params.extra.KEY}`` are filled in by the service; ``{proxy_url}`` is left for ``evalproxy run``, which puts the
proxy's ``.../v1`` URL there. Any other ``{word}`` is refused when the config is created.
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evalproxy.adapter.core.errors import ConfigError, JobsInvalidFieldError
from evalproxy.adapter.core.placeholders import PLACEHOLDER
from evalproxy.adapter.core.placeholders import param_value as _param_value
from evalproxy.adapter.core.placeholders import placeholder_text as _text
from evalproxy.adapter.core.redact import secret_query
from evalproxy.records.auto_export import parse_plan

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SERVICE_PLACEHOLDERS = ("model_id", "output_dir")
PROXY_PLACEHOLDER = "proxy_url"
_ID_ALPHABET = string.ascii_uppercase + string.digits
M = TypeVar("M", bound=BaseModel)


def now() -> str:
    """UTC time as NeMo writes it (no zone, always microseconds, so text order is time order)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def new_job_id() -> str:
    return "eval-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiEndpoint(_Strict):
    url: str
    model_id: str = Field(min_length=1)
    api_key_name: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    type: str = "chat"
    adapter_config: dict[str, Any] | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class _Resource(_Strict):
    namespace: str = Field(default="default", pattern=NAME_PATTERN)
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = None
    project: str | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    ownership: dict[str, Any] | None = None


class TargetIn(_Resource):
    type: str = "model"
    api_endpoint: ApiEndpoint
    adapter_config: dict[str, Any] | None = None
    """Accepted beside ``api_endpoint`` too; stored in ``api_endpoint.adapter_config`` as the launcher has it."""


class Params(_Strict):
    limit_samples: int | None = Field(default=None, ge=1)
    parallelism: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0)
    request_timeout: float | None = Field(default=None, gt=0)
    task: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ConfigIn(_Resource):
    type: str = "custom"
    command: list[str] = Field(min_length=1)
    params: Params = Field(default_factory=Params)
    adapter_config: dict[str, Any] | None = None
    auto_export: dict[str, Any] | None = None
    """Where the job's run exports when it ends: ``{destinations: [...], <dest>: {settings}}`` (as a run config's
    ``export:``; :mod:`evalproxy.records.auto_export`)."""

    @field_validator("auto_export")
    @classmethod
    def _plan(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            try:
                parse_plan(v)
            except ConfigError as exc:
                raise ValueError(f"{exc.field}: {exc.reason}") from None
        return v


class JobIn(_Strict):
    namespace: str = Field(default="default", pattern=NAME_PATTERN)
    description: str | None = None
    project: str | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    ownership: dict[str, Any] | None = None
    target: str | dict[str, Any]
    config: str | dict[str, Any]


def _loc(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_model(cls: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate ``data``; the first problem becomes a 422 naming its field (``config.command``, ``target.name``)."""
    if not isinstance(data, dict):
        raise JobsInvalidFieldError(f"must be a JSON object, not {type(data).__name__}", field=prefix or None)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = _loc(tuple(first["loc"]), prefix)
        msg = first["msg"]
        if field.endswith("api_key"):
            msg = KEY_ADVICE
        elif first["type"] == "missing":
            msg = "required"
        raise JobsInvalidFieldError(f"{field}: {msg}" if field else msg, field=field or None) from None


KEY_ADVICE = ("the API key never goes into a record: keep it in an environment variable of the service and name that "
              "variable in api_key_name")


def check_endpoint_url(url: str, *, field: str) -> None:
    """Refuse a URL that carries a credential (``user:pass@``, or a query parameter such as ``key``, ``api-key``,
    ``token`` or ``sig``: :func:`~evalproxy.adapter.core.redact.secret_query`), naming the parameter, not its value."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise JobsInvalidFieldError(f"{field}: credentials in the URL (user:password@): {KEY_ADVICE}", field=field)
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if secret_query(name):
            raise JobsInvalidFieldError(f"{field}: the query parameter '{name}' carries a key: {KEY_ADVICE}",
                                    field=field)


def normalise_target(target: TargetIn, *, prefix: str = "") -> dict[str, Any]:
    """The stored form: ``adapter_config`` inside ``api_endpoint``."""
    data = target.model_dump()
    outer = data.pop("adapter_config")
    if outer is not None:
        if data["api_endpoint"]["adapter_config"] is not None:
            field = f"{prefix}.adapter_config" if prefix else "adapter_config"
            raise JobsInvalidFieldError(f"{field}: give adapter_config once, here or in api_endpoint", field=field)
        data["api_endpoint"]["adapter_config"] = outer
    return data


def check_placeholders(config: dict[str, Any], *, prefix: str = "") -> None:
    """Refuse a command with a placeholder the service cannot fill (unknown, or a param that is not set)."""
    p = f"{prefix}." if prefix else ""
    for i, arg in enumerate(config["command"]):
        for m in PLACEHOLDER.finditer(arg):
            name = m.group(1)
            if name in SERVICE_PLACEHOLDERS or name == PROXY_PLACEHOLDER:
                continue
            field = f"{p}command[{i}]"
            parts = name.split(".")
            if parts[0] != "params" or len(parts) < 2:
                known = ", ".join("{" + n + "}" for n in (PROXY_PLACEHOLDER, *SERVICE_PLACEHOLDERS))
                raise JobsInvalidFieldError(f"{field}: unknown placeholder {{{name}}} (known: {known}, {{params.*}})",
                                        field=field)
            if parts[1] not in Params.model_fields:
                raise JobsInvalidFieldError(f"{field}: unknown placeholder {{{name}}}: params has no field "
                                        f"'{parts[1]}'", field=field)
            found, value = _param_value(config["params"], parts[1:])
            if not found or value is None:
                raise JobsInvalidFieldError(f"{field}: placeholder {{{name}}} has no value: set {p}{name}",
                                        field=field)


def expand_command(config: dict[str, Any], *, model_id: str, output_dir: str) -> list[str]:
    """The command with every placeholder but ``{proxy_url}`` filled in (checked by :func:`check_placeholders`)."""
    fixed = {"model_id": model_id, "output_dir": output_dir}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in fixed:
            return fixed[name]
        if name == PROXY_PLACEHOLDER:
            return m.group(0)
        _, value = _param_value(config["params"], name.split(".")[1:])
        return _text(value)

    return [PLACEHOLDER.sub(fill, arg) for arg in config["command"]]
