"""Compare two run directories: are they comparable, did the scores move beyond noise, which answers changed.

``compare_runs(baseline, candidate, answers=...)`` reads each run's ``results.yaml``, ``requests.jsonl`` (the request
ledger), ``samples.jsonl`` (per-sample scores) and, where ``results.yaml`` carries none, ``adapter_config.yaml``.

1. Comparable? Every check is marked same / differs. Paths (``cache_dir``, a store's ``cache_url`` and other
   ``*_dir``/``*_path``/``*_file`` params) are shown but never make runs incomparable: two runs always live in two
   directories. Requests are paired
   by their input key (what is asked, without model and sampling parameters), the k-th occurrence in one run with
   the k-th in the other, and generation parameters are compared pair by pair.
2. Scores: McNemar (exact binomial for few discordant pairs) when per-sample results are all 0/1, a seeded paired
   bootstrap for other per-sample results, else a z test from the harnesses' stderr. Higher is taken as better.
3. What changed: paired requests whose answers differ, through the ``answers(run_dir, prompt_key)`` callable; with
   no callable, the harnesses' own per-sample answers. Latency, tokens and finish reasons side by side.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import jinja2
import orjson
import yaml

from evalproxy.adapter.config.files import dig
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.loads import count_nodes, read_yaml
from evalproxy.records.explain import explain_miss
from evalproxy.records.harnesses.base import SampleScore, read_samples
from evalproxy.records.observed import GENERATION_PARAMS, LedgerEntry, prompt_key, read_ledger
from evalproxy.records.results import RunRecord, read_results
from evalproxy.records.stats import TestResult, is_binary, mcnemar, paired_bootstrap, quantile, stderr_z

Answers = Callable[[Path, str], str | None]
RequestBodies = Callable[[Path], Iterable[Mapping[str, Any]]]
FailOn = Literal["none", "regression"]

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_NOT_COMPARABLE = 2

_PATH_PARAM = re.compile(r"(^|_)(dir|path|file|paths|dirs)$|^cache_url$")  # where a run kept things (a store URL too)
MAX_COMPARED_NODES = 10_000
MAX_COMPARED_DEPTH = 32
log = logging.getLogger("evalproxy.compare")
_SKIP_TOP = frozenset({"interceptors", "post_eval_hooks", "caching_dir", "output_dir", "discovery"})


@dataclass
class Check:
    """One thing that must be held constant, with both sides as text."""

    name: str
    baseline: str
    candidate: str
    same: bool
    counts: bool = True
    detail: str = ""


@dataclass
class ScoreRow:
    section: str
    task: str
    metric: str
    score: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    method: str
    p_value: float | None
    significant: bool
    n: int = 0
    detail: str = ""


@dataclass
class ChangedAnswer:
    key: str
    prompt: str
    baseline: str | None
    candidate: str | None


@dataclass
class Distribution:
    name: str
    baseline: dict[str, Any]
    candidate: dict[str, Any]


@dataclass
class Comparison:
    baseline_dir: str
    candidate_dir: str
    checks: list[Check] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    changed: list[ChangedAnswer] = field(default_factory=list)
    changed_total: int = 0
    pairs_compared: int = 0
    distributions: list[Distribution] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    fail_on: FailOn = "none"
    alpha: float = 0.05

    @property
    def comparable(self) -> bool:
        return all(c.same for c in self.checks if c.counts)

    @property
    def regressions(self) -> list[ScoreRow]:
        return [r for r in self.scores if r.significant and r.delta is not None and r.delta < 0]

    @property
    def exit_code(self) -> int:
        """0 comparable (and, with ``fail_on="regression"``, no significant drop); 2 not comparable; 1 regression."""
        if not self.comparable:
            return EXIT_NOT_COMPARABLE
        if self.fail_on == "regression" and self.regressions:
            return EXIT_REGRESSION
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["comparable"] = self.comparable
        d["exit_code"] = self.exit_code
        d["differences"] = [c.name for c in self.checks if c.counts and not c.same]
        return d

    def to_text(self) -> str:
        return render_text(self)

    def to_html(self) -> str:
        return render_html(self)


# ---------------------------------------------------------------------------------------------------------- loading


@dataclass
class _Run:
    path: Path
    record: RunRecord
    ledger: list[LedgerEntry]
    samples: list[SampleScore]
    adapter: dict[str, Any]


def _load(run_dir: str | os.PathLike[str]) -> _Run:
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigError("not a run directory", file=str(p))
    try:
        record = read_results(p)
    except ConfigError as exc:
        if exc.reason != "no results.yaml here":
            log.warning("%s: compared without this run record", exc)
        record = RunRecord()
    adapter = dict(record.target.api_endpoint.adapter_config)
    if not adapter and (p / "adapter_config.yaml").exists():
        loaded = read_yaml(p / "adapter_config.yaml") or {}
        inner = dig(loaded, "target", "api_endpoint", "adapter_config") if "target" in loaded else (
            dig(loaded, "adapter_config") if "adapter_config" in loaded else loaded)
        adapter = dict(inner) if isinstance(inner, dict) else {}
    ledger = [e if all(_bounded(v) is v for v in e.params.values())
              else replace(e, params={k: _bounded(v) for k, v in e.params.items()}) for e in read_ledger(p)]
    return _Run(p, record, ledger, list(read_samples(p)), adapter)


@dataclass(frozen=True)
class TooLarge:
    """Stands in for a value too large or too deep to compare field by field or to show: equal only to the same
    value (by a digest of its canonical JSON; one too deep even for that is equal to nothing)."""

    digest: str
    nodes: int

    def __str__(self) -> str:
        return f"too large to compare ({self.nodes}+ values, sha256 {self.digest[:12]})"


def _bounded(v: Any) -> Any:
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


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, TooLarge):
        return str(v)
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ------------------------------------------------------------------------------------------------------ comparable?


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
    a, b = _bounded(a), _bounded(b)
    if isinstance(a, TooLarge) or isinstance(b, TooLarge):
        detail = "; ".join(filter(None, [detail, "too large to compare field by field: compared whole"]))
    checks.append(Check(name, _fmt(a), _fmt(b), a == b, counts, detail))


def _pairs(a: Sequence[LedgerEntry], b: Sequence[LedgerEntry]) -> list[tuple[LedgerEntry, LedgerEntry]]:
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


def _param_checks(base: _Run, cand: _Run, checks: list[Check]) -> None:
    pairs = _pairs(base.ledger, cand.ledger)
    if not pairs:
        # No paired requests (no ledgers, or nothing asked in common): the recorded params are all there is.
        bp, cp = base.record.config.params, cand.record.config.params
        for name in GENERATION_PARAMS:
            if name in bp or name in cp:
                _check(checks, f"generation param {name}", bp.get(name), cp.get(name),
                       detail="from results.yaml (no paired requests in the ledgers)")
        return
    shown: dict[Any, str] = {}

    def fmt(v: Any) -> str:  # once per distinct value: a run has many requests and few values
        try:
            return shown.setdefault((type(v), v), _fmt(v)) if v.__hash__ is not None else _fmt(v)
        except TypeError:  # a tuple holding a list
            return _fmt(v)

    for name in GENERATION_PARAMS:
        changes: Counter[tuple[str, str]] = Counter()
        values_b: Counter[str] = Counter()
        values_c: Counter[str] = Counter()
        for eb, ec in pairs:
            vb, vc = eb.params.get(name), ec.params.get(name)
            values_b[fmt(vb) if name in eb.params else "absent"] += 1
            values_c[fmt(vc) if name in ec.params else "absent"] += 1
            if (name in eb.params, vb) != (name in ec.params, vc):
                changes[(fmt(vb) if name in eb.params else "absent",
                         fmt(vc) if name in ec.params else "absent")] += 1
        if values_b == Counter({"absent": len(pairs)}) and values_c == values_b:
            continue
        summary_b = ", ".join(f"{v} ({n})" for v, n in values_b.most_common(3))
        summary_c = ", ".join(f"{v} ({n})" for v, n in values_c.most_common(3))
        detail = ""
        if changes:
            (vb, vc), n = changes.most_common(1)[0]
            total = sum(changes.values())
            detail = f"{name} {vb} in baseline, {vc} in candidate on {n} of {len(pairs)} requests"
            if total > n:
                detail += f" (and other changes on {total - n} more)"
        checks.append(Check(f"generation param {name}", summary_b, summary_c, not changes, True, detail))


def _comparability(base: _Run, cand: _Run) -> list[Check]:
    checks: list[Check] = []
    eb, ec = base.record.target.api_endpoint, cand.record.target.api_endpoint
    _check(checks, "endpoint type", eb.type or base.adapter.get("endpoint_type"),
           ec.type or cand.adapter.get("endpoint_type"))
    _check(checks, "model id", eb.model_id, ec.model_id)
    ib, ic = _interceptors(base.adapter), _interceptors(cand.adapter)
    _check(checks, "interceptor chain", list(ib), list(ic))
    for name in [*ib, *(n for n in ic if n not in ib)]:
        pb, pc = ib.get(name, {}), ic.get(name, {})
        for param in sorted(set(pb) | set(pc)):
            is_path = bool(_PATH_PARAM.search(param))
            _check(checks, f"{name}.{param}", pb.get(param), pc.get(param), counts=not is_path,
                   detail="a path: shown, not counted" if is_path else "")
    for key in sorted((set(base.adapter) | set(cand.adapter)) - _SKIP_TOP):
        _check(checks, f"adapter_config.{key}", base.adapter.get(key), cand.adapter.get(key))
    _param_checks(base, cand, checks)
    tb = sorted([*base.record.results.tasks, *base.record.results.groups])
    tc = sorted([*cand.record.results.tasks, *cand.record.results.groups])
    _check(checks, "tasks", tb, tc)
    kb = Counter(e.input_key for e in base.ledger)
    kc = Counter(e.input_key for e in cand.ledger)
    only_b = sum((kb - kc).values())
    only_c = sum((kc - kb).values())
    checks.append(Check("prompts", f"{sum(kb.values())} requests", f"{sum(kc.values())} requests",
                        only_b == 0 and only_c == 0, True,
                        f"{only_b} requests only in baseline, {only_c} only in candidate"
                        if only_b or only_c else "every request asked in both"))
    hb, hc = base.record.harness, cand.record.harness
    _check(checks, "harness", f"{hb.name or '-'} {hb.version or ''}".strip(),
           f"{hc.name or '-'} {hc.version or ''}".strip())
    _check(checks, "evalproxy version", base.record.evalproxy.version or None, cand.record.evalproxy.version or None)
    return checks


# ----------------------------------------------------------------------------------------------------------- scores


def _score_rows(base: _Run, cand: _Run, *, alpha: float, seed: int, iterations: int) -> list[ScoreRow]:
    samples_b: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    samples_c: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for s in base.samples:
        samples_b[(s.task, s.metric)][s.sample_id] = s.value
    for s in cand.samples:
        samples_c[(s.task, s.metric)][s.sample_id] = s.value
    rows: list[ScoreRow] = []
    for section in ("tasks", "groups"):
        sb = getattr(base.record.results, section)
        sc = getattr(cand.record.results, section)
        for task in sorted(set(sb) | set(sc)):
            mb = sb[task].metrics if task in sb else {}
            mc = sc[task].metrics if task in sc else {}
            for metric in sorted(set(mb) | set(mc)):
                scb = mb[metric].scores if metric in mb else {}
                scc = mc[metric].scores if metric in mc else {}
                for score in sorted(set(scb) | set(scc)):
                    vb = scb[score].value if score in scb else None
                    vc = scc[score].value if score in scc else None
                    delta = vc - vb if vb is not None and vc is not None else None
                    test = TestResult("none", None, 0, "score in one run only")
                    if delta is not None:
                        per_b = samples_b.get((task, metric), {})
                        per_c = samples_c.get((task, metric), {})
                        common = sorted(set(per_b) & set(per_c))
                        if section == "tasks" and common:
                            xb = [per_b[k] for k in common]
                            xc = [per_c[k] for k in common]
                            test = mcnemar(xb, xc) if is_binary(xb) and is_binary(xc) else \
                                paired_bootstrap(xb, xc, iterations=iterations, seed=seed)
                        else:
                            seb = scb[score].stats.stderr if scb[score].stats else None
                            sec = scc[score].stats.stderr if scc[score].stats else None
                            test = stderr_z(delta, seb, sec)
                    significant = test.p_value is not None and test.p_value < alpha and bool(delta)
                    rows.append(ScoreRow(section, task, metric, score, vb, vc, delta, test.method, test.p_value,
                                         significant, test.n, test.detail))
    return rows


# ---------------------------------------------------------------------------------------------------- what changed


def _changed_from_ledger(base: _Run, cand: _Run, answers: Answers,
                         limit: int) -> tuple[list[ChangedAnswer], int, int]:
    changed: list[ChangedAnswer] = []
    total = 0
    pairs = 0
    done: set[str] = set()
    for eb, ec in _pairs(base.ledger, cand.ledger):
        if eb.input_key in done:
            continue
        done.add(eb.input_key)
        ab, ac = answers(base.path, eb.prompt_key), answers(cand.path, ec.prompt_key)
        if ab is None and ac is None:
            continue
        pairs += 1
        if ab != ac:
            total += 1
            if len(changed) < limit:
                changed.append(ChangedAnswer(eb.input_key[:12], eb.input_key, ab, ac))
    return changed, total, pairs


def _changed_from_samples(base: _Run, cand: _Run, limit: int) -> tuple[list[ChangedAnswer], int, int]:
    ab = {(s.task, s.sample_id): s.answer for s in base.samples if s.answer is not None}
    ac = {(s.task, s.sample_id): s.answer for s in cand.samples if s.answer is not None}
    common = sorted(set(ab) & set(ac), key=lambda k: (k[0], _natural(k[1])))
    changed = [ChangedAnswer(f"{t}/{sid}", f"{t} sample {sid}", ab[(t, sid)], ac[(t, sid)])
               for t, sid in common if ab[(t, sid)] != ac[(t, sid)]]
    return changed[:limit], len(changed), len(common)


def _natural(s: str) -> tuple[int, str]:
    return (int(s), "") if s.isdigit() else (1 << 62, s)


def _summary(values: list[float]) -> dict[str, Any]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"n": len(v), "mean": r(sum(v) / len(v)), "p50": r(quantile(v, 0.5)), "p90": r(quantile(v, 0.9)),
            "p99": r(quantile(v, 0.99)), "max": r(v[-1]), "sum": r(sum(v))}


def _distributions(base: _Run, cand: _Run) -> list[Distribution]:
    out = []
    for name, attr in (("latency_ms", "latency_ms"), ("prompt_tokens", "prompt_tokens"),
                       ("completion_tokens", "completion_tokens")):
        vb = [float(getattr(e, attr)) for e in base.ledger if getattr(e, attr) is not None]
        vc = [float(getattr(e, attr)) for e in cand.ledger if getattr(e, attr) is not None]
        if vb or vc:
            out.append(Distribution(name, _summary(vb), _summary(vc)))
    for name, attr in (("finish_reason", "finish_reason"), ("status", "status"), ("cache_hit", "cache_hit")):
        cb = Counter(str(getattr(e, attr)) for e in base.ledger if getattr(e, attr) is not None)
        cc = Counter(str(getattr(e, attr)) for e in cand.ledger if getattr(e, attr) is not None)
        if cb or cc:
            out.append(Distribution(name, dict(cb.most_common()), dict(cc.most_common())))
    return out


def _explain_one_run_prompts(base: _Run, cand: _Run, bodies: RequestBodies, limit: int) -> list[dict[str, Any]]:
    stored_b = list(bodies(base.path))
    stored_c = list(bodies(cand.path))
    # The full prompt key (all but the model), as a cache lookup sees it: a new seed alone is a miss.
    keys_b = {prompt_key(b) for b in stored_b}
    out = []
    for body in stored_c:
        if prompt_key(body) in keys_b:
            continue
        near = explain_miss(body, stored_b, limit=1)
        out.append({"request": dict(body), "nearest_distance": near[0].distance if near else None,
                    "differences": [d.description for d in near[0].diffs] if near else []})
        if len(out) >= limit:
            break
    return out


def compare_runs(
    baseline: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    answers: Answers | None = None,
    request_bodies: RequestBodies | None = None,
    max_changed: int = 10,
    fail_on: FailOn = "none",
    alpha: float = 0.05,
    seed: int = 0,
    bootstrap_iterations: int = 2000,
) -> Comparison:
    """Compare two run directories (see the module docstring). ``answers(run_dir, prompt_key)`` gives the answer
    text stored for a ledger entry; ``request_bodies(run_dir)`` the stored request bodies, used to explain
    prompts that exist in only one run."""
    base, cand = _load(baseline), _load(candidate)
    result = Comparison(str(base.path), str(cand.path), fail_on=fail_on, alpha=alpha)
    result.checks = _comparability(base, cand)
    result.scores = _score_rows(base, cand, alpha=alpha, seed=seed, iterations=bootstrap_iterations)
    if answers is not None and base.ledger and cand.ledger:
        result.changed, result.changed_total, result.pairs_compared = _changed_from_ledger(base, cand, answers,
                                                                                           max_changed)
    else:
        result.changed, result.changed_total, result.pairs_compared = _changed_from_samples(base, cand, max_changed)
    result.distributions = _distributions(base, cand)
    if request_bodies is not None:
        result.explained = _explain_one_run_prompts(base, cand, request_bodies, max_changed)
    return result


# -------------------------------------------------------------------------------------------------------- rendering


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def render_text(c: Comparison) -> str:
    lines = [f"baseline:  {c.baseline_dir}", f"candidate: {c.candidate_dir}", ""]
    diffs = [x for x in c.checks if x.counts and not x.same]
    if diffs:
        lines.append(f"NOT COMPARABLE: {len(diffs)} difference(s)")
        for x in diffs:
            lines.append(f"  - {x.name}: {x.detail or f'{x.baseline} in baseline, {x.candidate} in candidate'}")
    else:
        lines.append("COMPARABLE: endpoint, chain, generation parameters, tasks, prompts and versions agree")
    lines.append("")
    lines.append("scores (candidate - baseline):")
    for r in c.scores:
        mark = "  SIGNIFICANT" if r.significant else ""
        p = "-" if r.p_value is None else f"{r.p_value:.3g}"
        lines.append(f"  {r.task} {r.metric}.{r.score}: {_num(r.baseline)} -> {_num(r.candidate)} "
                     f"(delta {_num(r.delta)}, {r.method}, p={p}){mark}")
    if not c.scores:
        lines.append("  (no scores in either run)")
    lines.append("")
    lines.append(f"answers changed: {c.changed_total} of {c.pairs_compared} paired prompts")
    for ch in c.changed:
        lines.append(f"  [{ch.key}] baseline: {_clip(ch.baseline)!r}  candidate: {_clip(ch.candidate)!r}")
    if c.distributions:
        lines.append("")
        lines.append("distributions (baseline -> candidate):")
    for d in c.distributions:
        if "n" in d.baseline or "n" in d.candidate:
            parts = [f"{k} {_num(d.baseline.get(k))} -> {_num(d.candidate.get(k))}"
                     for k in ("n", "mean", "p50", "p90", "p99", "max")]
        else:
            keys = list(dict.fromkeys([*d.baseline, *d.candidate]))
            parts = [f"{k} {d.baseline.get(k, 0)} -> {d.candidate.get(k, 0)}" for k in keys]
        lines.append(f"  {d.name}: " + ", ".join(parts))
    lines.append("")
    lines.append(f"exit status {c.exit_code}")
    return "\n".join(lines) + "\n"


def _clip(s: str | None, n: int = 120) -> str | None:
    return s if s is None or len(s) <= n else s[: n - 3] + "..."


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evalproxy.records", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render_html(c: Comparison) -> str:
    """A self-contained page (inline CSS, no script); every string from a run is autoescaped."""
    return _ENV.get_template("compare.html.j2").render(c=c, num=_num)
