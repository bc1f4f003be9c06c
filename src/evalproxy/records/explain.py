"""Why a request missed the cache: the nearest stored requests and the fields in which they differ.

Distance is the number of differing leaf fields (messages compared message by message, so a changed system prompt
is one difference, not a whole new conversation). ``model`` counts too, since the cache key covers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evalproxy.storage.base import by_value

MAX_SHOWN_CHARS = 200


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: its path (``messages[0].content``), both values, and a short description."""

    path: str
    request: Any
    stored: Any
    description: str


@dataclass
class Neighbour:
    index: int
    distance: int
    diffs: list[FieldDiff] = field(default_factory=list)

    def summary(self) -> str:
        return "; ".join(d.description for d in self.diffs) or "identical"


_MISSING = object()


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(path: str, a: Any, b: Any, body: Mapping[str, Any]) -> str:
    if a is _MISSING:
        return f"{path} absent in the request (stored: {_short(b)})"
    if b is _MISSING:
        if path == "seed":
            return f"new seed {_short(a)}"
        return f"{path} added: {_short(a)}"
    if path.startswith("messages[") and path.endswith(".content"):
        idx = int(path[len("messages["):path.index("]")])
        msgs = body.get("messages") or []
        role = msgs[idx].get("role") if idx < len(msgs) and isinstance(msgs[idx], Mapping) else None
        if role in ("system", "developer"):
            return f"system prompt changed ({path})"
        return f"{role or 'message'} text changed ({path})"
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        verb = "bumped" if a > b else "lowered"
        return f"{path} {verb}: {_short(b)} -> {_short(a)}"
    return f"{path} changed: {_short(b)} -> {_short(a)}"


def _diff(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k), out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b) and not path.startswith("messages"):
            out.append((path, a, b))
            return
        for i in range(max(len(a), len(b))):
            _diff(a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING, f"{path}[{i}]", out)
    elif a != b:
        out.append((path, a, b))


def field_diffs(request: Mapping[str, Any], stored: Mapping[str, Any]) -> list[FieldDiff]:
    """The fields in which ``request`` differs from ``stored`` (numbers by value: ``0`` equals ``0.0``)."""
    raw: list[tuple[str, Any, Any]] = []
    _diff(by_value(request), by_value(stored), "", raw)
    return [FieldDiff(p, None if a is _MISSING else a, None if b is _MISSING else b, _describe(p, a, b, request))
            for p, a, b in raw]


def explain_miss(request: Mapping[str, Any], stored: Iterable[Mapping[str, Any]], *, limit: int = 3) -> list[Neighbour]:
    """The ``limit`` stored requests nearest to ``request`` (fewest differing fields), each with its differences.

    An empty list means nothing was stored; a neighbour with no differences means the request should have hit
    (look at the path, the slot of a sampled request, or whether the answer was an error and so never stored).
    """
    scored: list[Neighbour] = []
    for i, body in enumerate(stored):
        diffs = field_diffs(request, body)
        scored.append(Neighbour(index=i, distance=len(diffs), diffs=diffs))
    scored.sort(key=lambda n: (n.distance, n.index))
    return scored[:limit]
