"""Would a request hit the cache, and if not, why: the nearest stored requests and the fields in which they differ.

``key_request`` keys a request as the run's proxy would (the request side of its chain up to ``caching``, then
caching's own key function); the command (``evalproxy cache explain``) looks that key up in the store: HIT or MISS.
For a miss, ``explain_miss`` ranks the stored requests (every stored key whose request the store kept: the saved
pairs) by how many fields differ, each with its field-level and text-level (unified diff) differences.

Distance is the number of differing leaf fields (messages compared message by message, so a changed system prompt
is one difference, not a whole new conversation). ``model`` counts too, since the cache key covers it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.flow.frozen import thaw
from evalproxy.adapter.flow.request import ENDPOINT_PATHS
from evalproxy.storage.base import by_value, canonical_json

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
    whole = path.startswith("messages[") and path.endswith("]")
    if whole and a is _MISSING and isinstance(b, Mapping):
        return f"{b.get('role') or 'a'} message absent in the request ({path}; stored: {_short(b.get('content'))})"
    if whole and b is _MISSING and isinstance(a, Mapping):
        return f"{a.get('role') or 'a'} message added ({path}: {_short(a.get('content'))})"
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
        if path == "messages" and len(a) != len(b):
            _diff_messages(a, b, out)
            return
        if len(a) != len(b):
            out.append((path, a, b))
            return
        for i in range(len(a)):
            _diff(a[i], b[i], f"{path}[{i}]", out)
    elif a != b:
        out.append((path, a, b))


def _diff_messages(a: list[Any], b: list[Any], out: list[tuple[str, Any, Any]]) -> None:
    """Two conversations of different lengths, aligned: a message one side adds (a system prompt) is one difference,
    not a shift of every message after it."""
    keys_a = [canonical_json(m) for m in a]
    keys_b = [canonical_json(m) for m in b]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            ia, jb = i1 + k, j1 + k
            _diff(a[ia] if ia < i2 else _MISSING, b[jb] if jb < j2 else _MISSING,
                  f"messages[{ia if ia < i2 else jb}]", out)


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


# ------------------------------------------------------------------------------------------ HIT or MISS, as keyed


@dataclass
class KeyedRequest:
    """A request as the run's proxy would key it: the body after the interceptors listed before ``caching``."""

    path: str
    body: dict[str, Any]
    key: str
    applied: list[str] = field(default_factory=list)
    """Interceptors before caching that were applied (in order)."""
    skipped: list[str] = field(default_factory=list)
    """Interceptors before caching that could not be: not built in (a plugin a run dir's reader never imports)."""
    sampled: bool = False
    reuse: bool = True
    bypass: bool = False
    """The run's caching was off (NeMo 0.4's ``bypass: true``): nothing is looked up or stored."""
    session: str | None = None
    """The session whose key this is (``session_prefix: true``), or None."""
    needs_session: bool = False
    """The run's caching prefixes keys by session, and no session was given."""


@dataclass
class Explanation:
    """``cache explain``'s answer: HIT or MISS first, then for a miss the nearest stored requests."""

    verdict: Literal["HIT", "MISS"]
    keyed: KeyedRequest
    reason: str
    neighbours: list[Neighbour] = field(default_factory=list)
    stored: list[Mapping[str, Any]] = field(default_factory=list)
    """The stored requests the neighbours index."""
    stored_answers: int = 0


def _chain_before_caching(adapter: Mapping[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """The enabled interceptors listed before ``caching`` (name, config) and caching's own config."""
    before: list[tuple[str, dict[str, Any]]] = []
    items = adapter.get("interceptors")
    for item in items if isinstance(items, list) else []:
        entry: Any = {"name": item} if isinstance(item, str) else item
        if not isinstance(entry, Mapping) or entry.get("enabled", True) is False:
            continue
        raw = entry.get("config")
        config: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        if entry.get("name") == "caching":
            return before, config
        before.append((str(entry.get("name")), config))
    return before, {}


def default_path(adapter: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    """The path a request is keyed with when none is given: completions for a ``prompt`` body, else the run's
    ``endpoint_type``."""
    if "prompt" in body and "messages" not in body:
        return "/v1/completions"
    return ENDPOINT_PATHS.get(str(adapter.get("endpoint_type") or "chat"), "/v1/chat/completions")


async def key_request(request: Mapping[str, Any], adapter: Mapping[str, Any], *, path: str | None = None,
                      session: str | None = None, output_dir: Path | None = None) -> KeyedRequest:
    """Run ``request`` through the request side of the run's chain up to ``caching`` and key it with caching's own
    key function. Only built-in interceptors are applied (a run dir's reader never imports its plugins); the others
    are named in ``skipped``."""
    from evalproxy.adapter.chain.interceptor import build_chain
    from evalproxy.adapter.config.schema import AdapterConfig, ServerConfig
    from evalproxy.adapter.flow.request import RequestContext
    from evalproxy.adapter.flow.response import ProxyResponse
    from evalproxy.adapter.flow.run import RunContext
    from evalproxy.adapter.registry.registry import BUILTIN_PACKAGES, Registry
    from evalproxy.adapter.server.prometheus import Prometheus
    from evalproxy.interceptors.caching import is_deterministic, session_key
    from evalproxy.storage import cache_key

    before, caching = _chain_before_caching(adapter)
    registry = Registry(unscanned=BUILTIN_PACKAGES)
    run = RunContext(output_dir=output_dir or Path.cwd(), run_id="explain", config=AdapterConfig(),
                     server=ServerConfig(), prometheus=Prometheus())
    layers, applied, skipped = [], [], []
    for name, config in before:
        try:
            cls = registry.interceptor(name)
        except ConfigError:
            skipped.append(name)
            continue
        if getattr(cls, "modifies_request", False):
            layers.append(cls(cls.Params.model_validate(config), run))
            applied.append(name)
    seen: list[RequestContext] = []

    async def capture(ctx: RequestContext) -> ProxyResponse:
        seen.append(ctx)
        return ProxyResponse(204)

    where = path or default_path(adapter, request)
    await build_chain(layers, capture)(RequestContext(method="POST", path=where, json=request, run=run))
    ctx = seen[0]
    body = thaw(ctx.json) if ctx.json is not None else {}
    repeats = caching.get("repeats", "auto")
    sampled = repeats == "sample" or (repeats != "reuse" and not is_deterministic(body))
    key = cache_key(ctx.path, body, ctx.query)
    by_session = bool(caching.get("session_prefix"))
    if by_session and session:
        key = session_key(session, key)
    return KeyedRequest(ctx.path, body, key, applied, skipped, sampled,
                        bool(caching.get("reuse_cached_responses", True)), bool(caching.get("bypass")),
                        session if by_session else None, by_session and not session)


def text_diff(request: Any, stored: Any, name: str) -> list[str]:
    """A unified diff of two texts (the stored one first), or nothing when either is not text."""
    if not isinstance(request, str) or not isinstance(stored, str):
        return []
    return list(difflib.unified_diff(stored.splitlines(), request.splitlines(), f"stored {name}",
                                     f"request {name}", lineterm="", n=2))


@dataclass(frozen=True)
class Failed:
    """A request whose answer failed, as the store kept it (failed answers are never cached)."""

    path: str
    request: Mapping[str, Any]
    status: int
    error: str


def _verdict_lines(keyed: KeyedRequest, where: str, answered: bool) -> list[str]:
    chain = f" after {', '.join(keyed.applied)}" if keyed.applied else " (no interceptor before caching changes it)"
    if keyed.bypass:
        lines = ["MISS: this run's caching is bypassed (bypass: true): nothing is looked up or stored"]
    elif answered and keyed.reuse:
        lines = [f"HIT: the proxy answers this request from the cache {where} (key {keyed.key[:16]}, slot 0)"]
    elif answered:
        lines = [f"MISS: an answer is stored under this request's key ({keyed.key[:16]}), but this run's caching "
                 "does not replay it (reuse_cached_responses: false)"]
    else:
        lines = [f"MISS: no answer is stored under the key this request gets ({keyed.key[:16]}) in {where}"]
    lines.append(f"keyed as: POST {keyed.path}{chain}" + (f", in session {keyed.session}" if keyed.session else ""))
    if keyed.needs_session:
        lines.append("this run's caching keys requests by session (session_prefix: true): give --session ID (the "
                     "X-Session-Id header) to key a session's request; keyed here without one")
    if keyed.skipped:
        lines.append(f"not applied: {', '.join(keyed.skipped)} (not built in: a run dir's reader never imports its "
                     "plugins), so the key may differ from the proxy's")
    if keyed.sampled:
        lines.append("a sampled request (temperature absent or above 0, no seed): its first occurrence in a run takes "
                     "slot 0, its k-th occurrence slot k-1")
    return lines


def explain_text(keyed: KeyedRequest, where: str, answered: bool, stored: Sequence[Mapping[str, Any]],
                 failed: Sequence[Failed], *, limit: int = 3) -> tuple[int, list[str]]:
    """``cache explain``'s answer as lines, and its exit status: HIT or MISS first; for a miss, a failure of this
    very request the store kept (failed answers are never cached), then the nearest stored and failed requests with
    their field and text differences. Status 0 when explained, 1 for a miss with nothing to compare with."""
    from evalproxy.storage import cache_key

    lines = _verdict_lines(keyed, where, answered)
    if (answered and keyed.reuse) or keyed.bypass:
        return 0, lines
    for f in failed:
        if cache_key(f.path, f.request) == keyed.key:
            lines.append(f"this request failed before (status {f.status}: {f.error[:200]}): failed answers are never "
                         "stored, so the proxy asks upstream again")
            break
    if not stored and not failed:
        lines.append(f"no stored requests in {where} to compare with (the cache saves request bodies only with "
                     "save_requests: true)")
        return 1, lines
    bodies = [*stored, *(f.request for f in failed)]
    for n in explain_miss(keyed.body, bodies, limit=limit):
        if n.index < len(stored):
            label = f"stored request #{n.index}"
        else:
            f = failed[n.index - len(stored)]
            label = f"failed request #{n.index - len(stored)} (status {f.status})"
        lines.append(f"{label} ({n.distance} field(s) differ): {n.summary()}")
        lines += [f"    {line}" for d in n.diffs for line in text_diff(d.request, d.stored, d.path)]
    return 0, lines
