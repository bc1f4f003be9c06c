"""Are two runs comparable? Every setting that could change the answers is checked: same or differs.

What never counts, shown but not held against the runs:

* places (``cache_dir``, a store's ``cache_url``, other ``*_dir``/``*_path``/``*_file`` params): two runs always live
  in two directories;
* settings that cannot change an answer: report sizes (``html_report_size``, caching's ``max_saved_requests``, ...),
  what is saved or logged, statistics intervals, and the interceptors that only watch (logging, statistics,
  progress, traffic dumps);
* what the user declared as the difference under test (``--vary FIELD``): shown as *varied*.

Requests are paired by their input key (what is asked, without model and sampling parameters), the k-th occurrence
in one run with the k-th in the other, and generation parameters are compared pair by pair.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from evalproxy.adapter.core.errors import UsageError
from evalproxy.adapter.core.loads import count_nodes
from evalproxy.records.observed import GENERATION_PARAMS, LedgerEntry

if TYPE_CHECKING:
    from evalproxy.records.compare import Run

MAX_COMPARED_NODES = 10_000
MAX_COMPARED_DEPTH = 32

_PATH_PARAM = re.compile(r"(^|_)(dir|path|file|paths|dirs)$|^cache_url$")  # where a run kept things (a store URL too)
_SKIP_TOP = frozenset({"interceptors", "post_eval_hooks", "caching_dir", "output_dir", "discovery"})
# Interceptors that only watch the traffic (log, count, dump, report progress): they never change an answer.
WATCHERS = frozenset({"request_logging", "response_logging", "logging", "log_tokens", "response_stats",
                      "progress_tracking", "http_pairs_dump", "model_traffic"})
# Settings that decide what is kept, logged or reported, never what is asked or answered.
_INERT_TOP = frozenset({"html_report_size", "generate_html_report", "log_failed_requests", "tracking_requests_stats"})
_INERT_PARAMS = {
    "caching": frozenset({"save_requests", "save_responses", "max_saved_requests", "max_saved_responses",
                          "lease_seconds"}),
    "reasoning": frozenset({"enable_reasoning_tracking"}),
}
_INERT_NAME = re.compile(r"^(log_|logging_|max_logged_)|_interval$")
# --vary words that name a check by another name.
_ALIASES = {"system_prompt": "system_message", "model": "model id", "model_id": "model id",
            "endpoint_type": "endpoint type", "chain": "interceptor chain"}
# Checks whose difference follows from a varied setting that changes the request body.
_CHANGES_REQUESTS = ("system_message", "payload_modifier", "drop_params", "modify_tools", "consolidate_system",
                     "turn_counter", "reasoning_replay", "prompts")

INERT = "cannot change answers: shown, not counted"
PLACE = "a place: shown, not counted"
VARIED = "varied: the difference under test"


@dataclass
class Check:
    """One thing that must be held constant, with both sides as text."""

    name: str
    baseline: str
    candidate: str
    same: bool
    counts: bool = True
    detail: str = ""
    varied: bool = False


@dataclass(frozen=True)
class TooLarge:
    """Stands in for a value too large or too deep to compare field by field or to show: equal only to the same
    value (by a digest of its canonical JSON; one too deep even for that is equal to nothing)."""

    digest: str
    nodes: int

    def __str__(self) -> str:
        return f"too large to compare ({self.nodes}+ values, sha256 {self.digest[:12]})"


def bounded(v: Any) -> Any:
    """``v``, or a :class:`TooLarge` in its place when it holds more than ``MAX_COMPARED_NODES`` values or nests
    deeper than ``MAX_COMPARED_DEPTH`` (walked without recursion, and no further than the bounds)."""
    if not isinstance(v, dict | list | tuple):
        return v
    nodes = count_nodes(v, MAX_COMPARED_NODES, MAX_COMPARED_DEPTH)
    if nodes is not None:
        return v
    try:
        digest = hashlib.sha256(orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).hexdigest()
    except (orjson.JSONEncodeError, TypeError):
        digest = f"unique-{id(v):x}"
    return TooLarge(digest, MAX_COMPARED_NODES)


def fmt(v: Any) -> str:
    """A value as one line of text: strings as they are, anything else as JSON (a ``stop`` list of ``"\\n"`` shows
    as ``["\\n"]``, never as a raw line break)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, TooLarge):
        return str(v)
    return json.dumps(v, ensure_ascii=False, default=str)


def _interceptors(adapter: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    items = adapter.get("interceptors")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            out[item] = {}
            continue
        if not isinstance(item, Mapping) or item.get("enabled", True) is False:
            continue
        config = item.get("config")
        out[str(item.get("name"))] = dict(config) if isinstance(config, Mapping) else {}
    return out


def _check(checks: list[Check], name: str, a: Any, b: Any, *, counts: bool = True, detail: str = "") -> None:
    a, b = bounded(a), bounded(b)
    if isinstance(a, TooLarge) or isinstance(b, TooLarge):
        detail = "; ".join(filter(None, [detail, "too large to compare field by field: compared whole"]))
    checks.append(Check(name, fmt(a), fmt(b), a == b, counts, detail))


def pair_requests(a: Sequence[LedgerEntry], b: Sequence[LedgerEntry]) -> list[tuple[LedgerEntry, LedgerEntry]]:
    """Requests of two runs paired by input key, the k-th occurrence in one with the k-th in the other."""
    by_key: dict[str, list[LedgerEntry]] = defaultdict(list)
    for e in b:
        by_key[e.input_key].append(e)
    seen: Counter[str] = Counter()
    out = []
    for e in a:
        k = seen[e.input_key]
        seen[e.input_key] += 1
        others = by_key.get(e.input_key, [])
        if k < len(others):
            out.append((e, others[k]))
    return out


def _param_checks(base: Run, cand: Run, checks: list[Check]) -> None:
    pairs = pair_requests(base.ledger, cand.ledger)
    if not pairs:
        # No paired requests (no ledgers, or nothing asked in common): the recorded params are all there is, as sent
        # (the record's observed_params, in wire names), else config.params (a record written before them).
        bp = base.record.evalproxy.observed_params or base.record.config.params
        cp = cand.record.evalproxy.observed_params or cand.record.config.params
        for name in GENERATION_PARAMS:
            if name in bp or name in cp:
                _check(checks, f"generation param {name}", bp.get(name), cp.get(name),
                       detail="from results.yaml (no paired requests in the ledgers)")
        return
    shown: dict[Any, str] = {}

    def text(v: Any) -> str:  # once per distinct value: a run has many requests and few values
        try:
            return shown.setdefault((type(v), v), fmt(v)) if v.__hash__ is not None else fmt(v)
        except TypeError:  # a tuple holding a list
            return fmt(v)

    for name in GENERATION_PARAMS:
        changes: Counter[tuple[str, str]] = Counter()
        values_b: Counter[str] = Counter()
        values_c: Counter[str] = Counter()
        for eb, ec in pairs:
            vb, vc = eb.params.get(name), ec.params.get(name)
            sb = text(vb) if name in eb.params else "absent"
            sc = text(vc) if name in ec.params else "absent"
            values_b[sb] += 1
            values_c[sc] += 1
            if (name in eb.params, vb) != (name in ec.params, vc):
                changes[(sb, sc)] += 1
        if values_b == Counter({"absent": len(pairs)}) and values_c == values_b:
            continue
        detail = ""
        if changes:
            (vb, vc), n = changes.most_common(1)[0]
            total = sum(changes.values())
            detail = f"{name} {vb} in baseline, {vc} in candidate on {n} of {len(pairs)} requests"
            if total > n:
                detail += f" (and other changes on {total - n} more)"
        checks.append(Check(f"generation param {name}", _summary(values_b), _summary(values_c), not changes, True,
                            detail))


def _summary(values: Counter[str]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in values.most_common(3))


def _chain_checks(base: Run, cand: Run, checks: list[Check]) -> None:
    ib, ic = _interceptors(base.adapter), _interceptors(cand.adapter)
    acting_b = [n for n in ib if n not in WATCHERS]
    acting_c = [n for n in ic if n not in WATCHERS]
    _check(checks, "interceptor chain", acting_b, acting_c,
           detail="interceptors that only log, count or report are left out")
    watchers_b = [n for n in ib if n in WATCHERS]
    watchers_c = [n for n in ic if n in WATCHERS]
    if watchers_b != watchers_c:
        _check(checks, "watching interceptors", watchers_b, watchers_c, counts=False, detail=INERT)
    for name in [*ib, *(n for n in ic if n not in ib)]:
        pb, pc = ib.get(name, {}), ic.get(name, {})
        for param in sorted(set(pb) | set(pc)):
            if _PATH_PARAM.search(param):
                _check(checks, f"{name}.{param}", pb.get(param), pc.get(param), counts=False, detail=PLACE)
            elif name in WATCHERS or param in _INERT_PARAMS.get(name, ()) or _INERT_NAME.search(param):
                _check(checks, f"{name}.{param}", pb.get(param), pc.get(param), counts=False, detail=INERT)
            else:
                _check(checks, f"{name}.{param}", pb.get(param), pc.get(param))
    for key in sorted((set(base.adapter) | set(cand.adapter)) - _SKIP_TOP):
        inert = key in _INERT_TOP or bool(_INERT_NAME.search(key))
        _check(checks, f"adapter_config.{key}", base.adapter.get(key), cand.adapter.get(key), counts=not inert,
               detail=INERT if inert else "")


def _prompt_check(base: Run, cand: Run, checks: list[Check]) -> None:
    kb = Counter(e.input_key for e in base.ledger)
    kc = Counter(e.input_key for e in cand.ledger)
    only_b = sum((kb - kc).values())
    only_c = sum((kc - kb).values())
    checks.append(Check("prompts", f"{sum(kb.values())} requests", f"{sum(kc.values())} requests",
                        only_b == 0 and only_c == 0, True,
                        f"{only_b} requests only in baseline, {only_c} only in candidate"
                        if only_b or only_c else "every request asked in both"))
    qb = {(s.task, s.sample_id): s.input for s in base.samples if s.input is not None}
    qc = {(s.task, s.sample_id): s.input for s in cand.samples if s.input is not None}
    if qb and qc:
        changed = sum(1 for k in set(qb) & set(qc) if qb[k] != qc[k])
        one_side = len(set(qb) ^ set(qc))
        checks.append(Check("questions", f"{len(qb)} samples", f"{len(qc)} samples", changed == 0 and one_side == 0,
                            True, "the harness asked the same questions" if not (changed or one_side) else
                            f"{changed} questions worded differently, {one_side} in one run only"))


def comparability(base: Run, cand: Run) -> list[Check]:
    """Every check, in the order a reader wants them: what is run, how, on what, by which versions."""
    checks: list[Check] = []
    eb, ec = base.record.target.api_endpoint, cand.record.target.api_endpoint
    _check(checks, "endpoint type", eb.type or base.adapter.get("endpoint_type"),
           ec.type or cand.adapter.get("endpoint_type"))
    _check(checks, "model id", eb.model_id, ec.model_id)
    _chain_checks(base, cand, checks)
    _param_checks(base, cand, checks)
    tb = sorted([*base.record.results.tasks, *base.record.results.groups])
    tc = sorted([*cand.record.results.tasks, *cand.record.results.groups])
    _check(checks, "tasks", tb, tc)
    _prompt_check(base, cand, checks)
    hb, hc = base.record.harness, cand.record.harness
    _check(checks, "harness", f"{hb.name or '-'} {hb.version or ''}".strip(),
           f"{hc.name or '-'} {hc.version or ''}".strip())
    _check(checks, "evalproxy version", base.record.evalproxy.version or None, cand.record.evalproxy.version or None)
    return checks


def _matches(check: str, word: str) -> bool:
    target = _ALIASES.get(word, word)
    return check in (target, f"generation param {target}", f"adapter_config.{target}") or \
        check.startswith(target + ".")


def apply_vary(checks: list[Check], vary: Sequence[str]) -> None:
    """Mark the checks ``vary`` names as the difference under test (they no longer count).

    A word names a check (``model id``), an interceptor and so all its params (``system_message``), a generation
    parameter (``temperature``), or an alias (``system_prompt``, ``model``). When a varied setting changes the request
    body (a system prompt), the requests of the two runs differ by design: the ledger's ``prompts`` check is then
    left to the harness's ``questions`` check, which compares the questions the harness asked, before the proxy.
    A word that names no check is a :class:`UsageError` listing what can be named.
    """
    for word in vary:
        if not any(_matches(c.name, word) for c in checks):
            names = sorted({c.name.split(".")[0].removeprefix("generation param ") for c in checks})
            raise UsageError(f"--vary {word}: names no setting of these runs; one of: {', '.join(names)}")
    changes_requests = False
    for c in checks:
        if any(_matches(c.name, w) for w in vary):
            c.varied, c.counts = True, False
            c.detail = "; ".join(filter(None, [VARIED, c.detail]))
            changes_requests = changes_requests or (not c.same and c.name.startswith(_CHANGES_REQUESTS))
    questions = next((c for c in checks if c.name == "questions"), None)
    prompts = next((c for c in checks if c.name == "prompts"), None)
    if changes_requests and prompts is not None and not prompts.varied:
        prompts.counts = False
        prompts.detail += ("; the varied setting changes every request: the harness's questions are compared instead"
                           if questions is not None else
                           "; the varied setting changes every request (no harness samples to compare questions)")
