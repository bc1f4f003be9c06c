"""``{params.NAME}`` placeholders in a harness command, filled from NeMo-style params: the jobs service fills a
job's command with them, ``evalproxy run`` a launcher task's. ``{params.extra.KEY}`` reaches into ``extra``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def param_value(params: Mapping[str, Any], path: Sequence[str]) -> tuple[bool, Any]:
    """(found, value) of ``params.a.b`` in ``params``."""
    node: Any = params
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def placeholder_text(value: Any) -> str:
    """A param as a command word: text as is, booleans as ``true``/``false``, numbers, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def params_named(command: Sequence[str]) -> set[str]:
    """The params a command's placeholders name, as dotted paths under ``params`` (``temperature``,
    ``extra.seed``)."""
    return {m.group(1).split(".", 1)[1] for arg in command for m in PLACEHOLDER.finditer(arg)
            if m.group(1).startswith("params.")}


def fill_params(command: Sequence[str], params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(the command with each ``{params.*}`` that has a value filled in, the placeholders that have none); other
    placeholders (``{proxy_url}``) are left as written."""
    missing: list[str] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if not name.startswith("params."):
            return m.group(0)
        found, value = param_value(params, name.split(".")[1:])
        if not found or value is None:
            missing.append(name)
            return m.group(0)
        return placeholder_text(value)

    return [PLACEHOLDER.sub(fill, arg) for arg in command], missing
