"""Chat-template controls meant for a chat endpoint, found where they can have no effect (NeMo Evaluator 0.4's rule).

``chat_template_kwargs`` and ``chat_template`` act only where the server renders a prompt from ``messages``
(``/v1/chat/completions``). A text completions endpoint (``/v1/completions``) takes a rendered ``prompt`` and applies
no template, so such a field is inert there: ``chat_template_kwargs: {enable_thinking: false}`` sent to it never
reaches the model and the run scores in the wrong mode without a word. NeMo 0.4's policy, model-agnostic:

* a boolean anywhere inside ``chat_template_kwargs`` is a deliberate on/off toggle: an error;
* any other such field (a ``chat_template`` string, a non-boolean kwarg) is removed, with a warning;
* ``NEMO_EVALUATOR_ALLOW_COMPLETIONS_CHAT_TEMPLATE=1`` (or ``allow: true``) turns the error into that warning.

The same scan serves a request body (the ``completions_guard`` interceptor) and a config whose ``endpoint_type`` is
``completions`` (checked when the config is loaded, as 0.4 checks a legacy adapter_config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

CHAT_TEMPLATE_FIELDS = frozenset({"chat_template_kwargs", "chat_template"})
ALLOW_ENV_VAR = "NEMO_EVALUATOR_ALLOW_COMPLETIONS_CHAT_TEMPLATE"
_TRUTHY = frozenset({"1", "true", "yes", "on"})


def allowed_by_env() -> bool:
    """Whether the environment downgrades the error to a warning (0.4's variable and truthy spellings)."""
    return os.environ.get(ALLOW_ENV_VAR, "").strip().lower() in _TRUTHY


def is_text_completions_path(path: str) -> bool:
    """``/v1/completions`` (any prefix), never ``/v1/chat/completions``."""
    clean = path.split("?", 1)[0].rstrip("/")
    return clean.endswith("/completions") and not clean.endswith("/chat/completions")


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


@dataclass
class Found:
    """Chat-template fields found in one object, as dotted paths."""

    locations: list[str] = field(default_factory=list)
    toggles: list[str] = field(default_factory=list)
    """The ``chat_template_kwargs`` among them that hold a boolean."""

    def __bool__(self) -> bool:
        return bool(self.locations)


def scan(obj: Any, prefix: str = "", found: Found | None = None) -> Found:
    """Every chat-template field inside ``obj`` (mappings and lists, at any depth)."""
    found = Found() if found is None else found
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key in CHAT_TEMPLATE_FIELDS:
                found.locations.append(path)
                if key == "chat_template_kwargs" and _has_bool(value):
                    found.toggles.append(path)
            else:
                scan(value, path, found)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            scan(item, f"{prefix}[{i}]", found)
    return found


def strip(obj: Any) -> Any:
    """A copy of ``obj`` without chat-template fields at any depth."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in CHAT_TEMPLATE_FIELDS}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def explain(found: Found, where: str, *, fatal: bool) -> str:
    """The message for an error (``fatal``) or a warning about ``found`` in ``where``."""
    names = ", ".join(sorted({loc.rsplit(".", 1)[-1] for loc in found.locations}))
    text = (f"{names} in {where} ({', '.join(sorted(set(found.locations)))}): a text completions endpoint "
            "(/v1/completions) applies no chat template, so these fields never reach the model")
    if fatal:
        return (f"{text}. The boolean under {', '.join(sorted(set(found.toggles)))} switches the model's behaviour "
                "(reasoning on or off, say) and would be silently ignored, so the run would score in the wrong "
                f"mode. Render the prompt with the toggle client-side, or use /v1/chat/completions; set "
                f"{ALLOW_ENV_VAR}=1 (or the guard's allow: true) to drop the field with a warning instead")
    return f"{text}; they were removed"
