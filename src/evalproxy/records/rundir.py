"""Run directory names from templates: ``-o 'runs/{date}-{model}'`` puts baseline and candidate side by side."""

from __future__ import annotations

import re
import secrets
import string
from datetime import datetime
from pathlib import Path

from evalproxy.adapter.core.errors import ConfigError

FIELDS = ("date", "time", "model", "run_id")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def new_run_id() -> str:
    """A short random run id (16 hex digits, as NeMo's invocation ids look)."""
    return secrets.token_hex(8)


def safe_component(text: str) -> str:
    """``text`` fit for one path component: ``meta/llama-3.1-8b`` becomes ``meta_llama-3.1-8b``."""
    cleaned = _UNSAFE.sub("_", text).strip("._")
    return cleaned or "unknown"


def expand_run_dir(template: str, *, model: str | None = None, run_id: str | None = None,
                   now: datetime | None = None) -> Path:
    """Expand ``{date}`` (YYYYMMDD), ``{time}`` (HHMMSS), ``{model}`` (path-safe) and ``{run_id}`` in ``template``.

    An unknown field, or ``{model}`` without a model, is a ``ConfigError`` naming it; a template without fields
    is returned as is.
    """
    moment = now or datetime.now()
    values = {
        "date": moment.strftime("%Y%m%d"),
        "time": moment.strftime("%H%M%S"),
        "model": safe_component(model) if model else None,
        "run_id": safe_component(run_id) if run_id else None,
    }
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in values or spec or conv:
            raise ConfigError(f"unknown field '{{{name}}}' in run directory template (known: "
                              + ", ".join(f"{{{f}}}" for f in FIELDS) + ")", field="output_dir")
        if values[name] is None:
            raise ConfigError(f"'{{{name}}}' in the run directory template but no {name} is known",
                              field="output_dir")
    return Path(template.format(**{k: v for k, v in values.items() if v is not None}))
