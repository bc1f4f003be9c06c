"""Release gate over many tasks: ``evalproxy gate --policy FILE BASELINE CANDIDATE``.

The policy file is ``nel gate``'s (NeMo Evaluator 0.4): ``version: 1``, ``defaults`` and ``benchmarks: {name:
entry}``, each entry ``tier`` (critical | supporting | advisory), ``max_drop`` (default 0.015), ``max_relative_drop``,
``relative_guard_below``, ``metric``, ``direction`` (higher_is_better | lower_is_better). A benchmark is a task (or
group) of the runs' ``results.yaml``.

Per task, as ``nel gate`` decides: the *damage* is the drop in the chosen score (a rise for ``lower_is_better``).
With at least ``MIN_PAIRED`` samples both runs graded, its 95% interval comes from the paired per-sample differences
(Student's t); else from both runs' stderr; else there is only the point estimate, which decides for advisory tasks
alone. The relative guard is checked first; then the interval: wholly above ``max_drop`` is a BREACH, wholly within
is a PASS, across it is INSUFFICIENT_EVIDENCE. A task the policy lists (not advisory) but a run lacks is MISSING.
Verdict: NO-GO on any BREACH or MISSING of a critical or supporting task, else INCONCLUSIVE on any
INSUFFICIENT_EVIDENCE, else GO; advisory tasks never decide it. Exit 0 GO, 1 NO-GO, 2 INCONCLUSIVE (``--no-strict``:
always 0), 3 a usage or I/O error.

Where evalproxy differs from ``nel gate``: a metric is one of the run's own (``match.accuracy``, ``exact_match``,
``pass@1``...; nel knows only ``mean_reward`` and ``pass@1``), and a task whose metric the policy does not name is
gated on its only score (nel refuses it); nel's ``mean_reward`` names the only score too. BASELINE and CANDIDATE are
run directories, or directories of run directories (a task in two of them is an error, as nel's duplicate bundle).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from evalproxy.adapter.core.errors import ConfigError, UsageError
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.records.compare import Run, load_run
from evalproxy.records.compare_scores import by_task_metric, paired_for
from evalproxy.records.results import RESULTS_FILE, Score
from evalproxy.records.stats import Interval, paired_delta_ci, unpaired_delta_ci

DEFAULT_MAX_DROP = 0.015
MIN_PAIRED = 10
TIERS = ("critical", "supporting", "advisory")
DIRECTIONS = ("higher_is_better", "lower_is_better")
_NEL_METRICS = frozenset({"mean_reward"})  # nel's names with no counterpart here: the task's only score
_FIELDS = frozenset({"tier", "max_drop", "max_relative_drop", "relative_guard_below", "metric", "direction"})

Status = Literal["PASS", "BREACH", "INSUFFICIENT_EVIDENCE", "MISSING"]
GateVerdict = Literal["GO", "NO-GO", "INCONCLUSIVE"]
EXIT = {"GO": 0, "NO-GO": 1, "INCONCLUSIVE": 2}


@dataclass(frozen=True)
class TaskPolicy:
    tier: str = "supporting"
    max_drop: float = DEFAULT_MAX_DROP
    max_relative_drop: float | None = None
    relative_guard_below: float | None = None
    metric: str | None = None
    direction: str = "higher_is_better"


@dataclass
class GatePolicy:
    defaults: TaskPolicy = field(default_factory=TaskPolicy)
    tasks: dict[str, TaskPolicy] = field(default_factory=dict)

    def resolve(self, task: str) -> TaskPolicy:
        return self.tasks.get(task, self.defaults)

    def required(self) -> list[str]:
        return sorted(t for t, p in self.tasks.items() if p.tier != "advisory")


def _entry(raw: Any, base: TaskPolicy, where: str, file: str) -> TaskPolicy:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, not {type(raw).__name__}", field=where, file=file)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(_FIELDS))}",
                          field=f"{where}.{unknown[0]}", file=file)
    values = {k: v for k, v in raw.items() if v is not None}
    for name in ("max_drop", "max_relative_drop", "relative_guard_below"):
        v = values.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise ConfigError(f"must be a number >= 0, not {v!r}", field=f"{where}.{name}", file=file)
    guard = values.get("relative_guard_below")
    if guard is not None and guard > 1:
        raise ConfigError(f"must be within [0, 1], not {guard!r}", field=f"{where}.relative_guard_below", file=file)
    for name, allowed in (("tier", TIERS), ("direction", DIRECTIONS)):
        if name in values and values[name] not in allowed:
            raise ConfigError(f"{values[name]!r} is not one of {', '.join(allowed)}", field=f"{where}.{name}",
                              file=file)
    if "metric" in values and not isinstance(values["metric"], str):
        raise ConfigError("must be a string", field=f"{where}.metric", file=file)
    return TaskPolicy(**{**asdict(base), **values})


def load_policy(path: str | Path) -> GatePolicy:
    """A gate policy file (nel's format), checked: errors name the file and the field."""
    p = Path(path)
    try:
        raw = read_yaml(p)
    except OSError as exc:
        raise UsageError(f"cannot read the gate policy {p}: {exc.strerror or exc}") from exc
    file = str(p)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a gate policy is a mapping, not {type(raw).__name__}", file=file)
    unknown = sorted(set(raw) - {"version", "defaults", "benchmarks"})
    if unknown:
        raise ConfigError("unknown field; known: version, defaults, benchmarks", field=str(unknown[0]), file=file)
    if raw.get("version", 1) != 1:
        raise ConfigError(f"unsupported gate policy version {raw.get('version')!r} (1 is known)", field="version",
                          file=file)
    defaults = _entry(raw.get("defaults"), TaskPolicy(), "defaults", file)
    benchmarks = raw.get("benchmarks") or {}
    if not isinstance(benchmarks, Mapping):
        raise ConfigError("must be a mapping of task names to entries", field="benchmarks", file=file)
    tasks = {str(k): _entry(v, defaults, f"benchmarks.{k}", file) for k, v in benchmarks.items()}
    return GatePolicy(defaults, tasks)


@dataclass
class TaskGate:
    """One task's result, in nel's words (``status``, ``reasons``) and numbers."""

    task: str
    tier: str
    status: Status = "PASS"
    metric: str = ""
    baseline: float | None = None
    candidate: float | None = None
    delta: float | None = None
    delta_ci: Interval | None = None
    n_paired: int = 0
    max_drop: float = DEFAULT_MAX_DROP
    evidence: str = ""
    reasons: list[str] = field(default_factory=list)


@dataclass
class GateReport:
    baseline_dir: str
    candidate_dir: str
    policy_file: str
    tasks: list[TaskGate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def gated(self) -> list[TaskGate]:
        return [t for t in self.tasks if t.tier != "advisory"]

    @property
    def verdict(self) -> GateVerdict:
        if any(t.status in ("BREACH", "MISSING") for t in self.gated):
            return "NO-GO"
        if any(t.status == "INSUFFICIENT_EVIDENCE" for t in self.gated):
            return "INCONCLUSIVE"
        return "GO"

    def verdict_reasons(self) -> list[str]:
        out = []
        for status in ("BREACH", "MISSING", "INSUFFICIENT_EVIDENCE"):
            names = [f"{t.task} [{t.tier}]" for t in self.gated if t.status == status]
            if names:
                out.append(f"{status}: {', '.join(names)}")
        if not out:
            n = sum(1 for t in self.gated if t.status == "PASS")
            out.append(f"all {n} gated task(s) passed" if n else "no gated task was evaluated")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report in ``nel gate``'s JSON shape (``report_version``, ``verdict``, ``benchmarks[]`` with its field
        names), so a pipeline reading nel's report reads this one; evalproxy's own fields are kept beside them."""
        return {"report_version": REPORT_VERSION, "verdict": self.verdict, "verdict_reasons": self.verdict_reasons(),
                "benchmarks": [_nel_fields(t) for t in self.tasks],
                "missing": [t.task for t in self.tasks if t.status == "MISSING"], "warnings": list(self.warnings),
                "baseline_dir": self.baseline_dir, "candidate_dir": self.candidate_dir,
                "policy_file": self.policy_file}


REPORT_VERSION = 1
"""``nel gate``'s report version, whose shape :meth:`GateReport.to_dict` writes."""


def _nel_fields(t: TaskGate) -> dict[str, Any]:
    lo, hi = t.delta_ci if t.delta_ci is not None else (None, None)
    return {"benchmark": t.task, "tier": t.tier, "status": t.status, "metric": t.metric,
            "baseline_score": t.baseline, "candidate_score": t.candidate, "delta": t.delta,
            "delta_ci_lower": lo, "delta_ci_upper": hi, "n_paired": t.n_paired, "max_drop_threshold": t.max_drop,
            "reasons": list(t.reasons), "evidence": t.evidence}


# ------------------------------------------------------------------------------------------------------- the runs


def runs_of(where: str | Path) -> list[Run]:
    """A run directory, or the run directories one level below ``where``."""
    p = Path(where)
    if not p.is_dir():
        raise UsageError(f"no run directory at {p}")
    if (p / RESULTS_FILE).exists():
        return [load_run(p)]
    runs = [load_run(d) for d in sorted(p.iterdir()) if d.is_dir() and (d / RESULTS_FILE).exists()]
    if not runs:
        raise UsageError(f"{p} holds no {RESULTS_FILE}, nor do the directories in it")
    return runs


def _tasks(runs: list[Run]) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in runs:
        for task in [*run.record.results.tasks, *run.record.results.groups]:
            if task in out and out[task] is not run:
                raise UsageError(f"task {task} is in two runs: {out[task].path} and {run.path}")
            out[task] = run
    return out


def _scores(run: Run, task: str) -> tuple[dict[str, tuple[str, str, Score]], dict[str, list[str]]]:
    """The task's scores by the names a policy may use: ``metric.score``, and ``metric`` or ``score`` alone where
    that names one score; and the short names that name several (``accuracy`` of ``strict`` and of ``flexible``),
    with the full names they could mean."""
    res = run.record.results
    tr = res.tasks.get(task) or res.groups.get(task)
    out: dict[str, tuple[str, str, Score]] = {}
    if tr is None:
        return out, {}
    for metric, m in tr.metrics.items():
        for score, s in m.scores.items():
            out[f"{metric}.{score}"] = (metric, score, s)
    short: dict[str, list[str]] = {}
    for full, (metric, score, _) in out.items():
        names = {score} | ({metric} if len(tr.metrics[metric].scores) == 1 or score == metric else set())
        for name in names - {full}:
            short.setdefault(name, []).append(full)
    for name, fulls in short.items():
        if len(fulls) == 1:
            out.setdefault(name, out[fulls[0]])
    return out, {name: sorted(fulls) for name, fulls in short.items() if len(fulls) > 1 and name not in out}


def _pick(task: str, policy: TaskPolicy, base: Run, cand: Run) -> tuple[str, str, Score, Score]:
    (sb, several), (sc, _) = _scores(base, task), _scores(cand, task)
    wanted = policy.metric if policy.metric not in _NEL_METRICS else None
    if wanted in several:
        raise UsageError(f"task {task}: {wanted!r} names several scores ({', '.join(several[wanted])}): name one "
                         f"in the policy (benchmarks.{task}.metric)")
    if wanted is None:
        full = sorted({k for k in sb if k.count(".") >= 1 and k in sc})
        if len(full) != 1:
            raise UsageError(f"task {task}: name the score to gate in the policy (benchmarks.{task}.metric); "
                             f"it has {', '.join(full) or 'none in both runs'}")
        wanted = full[0]
    if wanted not in sb or wanted not in sc:
        known = sorted(k for k in sb if "." in k)
        raise UsageError(f"task {task}: no score {wanted!r} in both runs; the baseline has {', '.join(known)}")
    metric, score, b = sb[wanted]
    return metric, score, b, sc[wanted][2]


# ------------------------------------------------------------------------------------------------------- deciding


def _evidence(t: TaskGate, base: Run, cand: Run, metric: str, score: str, sb: Score, sc: Score) -> None:
    """Scores, delta and its interval: paired when enough samples pair, else from both stderrs."""
    pairs = paired_for(by_task_metric(base.samples), by_task_metric(cand.samples), t.task, metric, score)
    common = sorted(set(pairs[0]) & set(pairs[1])) if pairs else []
    t.n_paired = len(common)
    if pairs and len(common) >= MIN_PAIRED:
        xb = [pairs[0][k].value for k in common]
        xc = [pairs[1][k].value for k in common]
        t.baseline, t.candidate = sum(xb) / len(xb), sum(xc) / len(xc)
        t.delta, t.delta_ci = t.candidate - t.baseline, paired_delta_ci(xb, xc)
        t.evidence = f"95% interval from {len(common)} paired samples"
        return
    if pairs:
        t.reasons.append(f"only {len(common)} paired samples (at least {MIN_PAIRED} give a paired interval)")
    else:
        t.reasons.append("no per-sample results in both runs")
    t.baseline, t.candidate = sb.value, sc.value
    t.delta = sc.value - sb.value
    seb = sb.stats.stderr if sb.stats else None
    sec = sc.stats.stderr if sc.stats else None
    t.delta_ci = unpaired_delta_ci(t.delta, seb, sec)
    t.evidence = "95% interval from both runs' stderr" if t.delta_ci else "point estimate only"


def _relative(t: TaskGate, policy: TaskPolicy, damage: float) -> bool:
    """The relative guard (low baselines): True when it breaches."""
    if policy.max_relative_drop is None or not t.baseline or damage <= 0:
        return False
    if policy.relative_guard_below is not None and t.baseline >= policy.relative_guard_below:
        return False
    relative = damage / abs(t.baseline)
    if relative <= policy.max_relative_drop:
        return False
    t.status = "BREACH"
    t.reasons.append(f"relative drop {relative * 100:.1f}% exceeds {policy.max_relative_drop * 100:.1f}%")
    return True


def _decide(t: TaskGate, policy: TaskPolicy) -> None:
    assert t.delta is not None
    sign = -1.0 if policy.direction == "higher_is_better" else 1.0
    damage = sign * t.delta
    if _relative(t, policy, damage):
        return
    if t.delta_ci is not None:
        lo, hi = sorted((sign * t.delta_ci[0], sign * t.delta_ci[1]))
        where = f"95% interval of the drop [{lo:.4f}, {hi:.4f}]"
        if lo > policy.max_drop:
            t.status = "BREACH"
            t.reasons.append(f"{where} is wholly beyond max_drop {policy.max_drop:.4f}")
        elif hi <= policy.max_drop:
            t.status = "PASS"
            t.reasons.append(f"{where} is within max_drop {policy.max_drop:.4f}")
        else:
            t.status = "INSUFFICIENT_EVIDENCE"
            t.reasons.append(f"{where} straddles max_drop {policy.max_drop:.4f}")
        return
    if t.tier != "advisory":
        t.status = "INSUFFICIENT_EVIDENCE"
        t.reasons.append("no interval for a gated task (no paired samples and no stderr)")
        return
    t.status = "BREACH" if damage > policy.max_drop else "PASS"
    t.reasons.append(f"point estimate of the drop {damage:.4f} {'exceeds' if damage > policy.max_drop else 'is within'}"
                     f" max_drop {policy.max_drop:.4f}")


def gate_runs(baseline: str | Path, candidate: str | Path, policy: GatePolicy, *,
              policy_file: str = "") -> GateReport:
    """Gate CANDIDATE against BASELINE under ``policy`` (see the module docstring)."""
    tb, tc = _tasks(runs_of(baseline)), _tasks(runs_of(candidate))
    report = GateReport(str(baseline), str(candidate), policy_file)
    for task in policy.required():
        if task not in tb or task not in tc:
            side = " and ".join(n for n, ts in (("baseline", tb), ("candidate", tc)) if task not in ts)
            report.tasks.append(TaskGate(task, policy.resolve(task).tier, "MISSING",
                                         reasons=[f"the policy requires {task}; the {side} has no such task"]))
    for name, only in (("baseline", sorted(set(tb) - set(tc))), ("candidate", sorted(set(tc) - set(tb)))):
        if only:
            report.warnings.append(f"tasks only in the {name}: {', '.join(only)}")
    for task in sorted(set(tb) & set(tc)):
        p = policy.resolve(task)
        try:
            metric, score, sb, sc = _pick(task, p, tb[task], tc[task])
        except UsageError as exc:
            if task in policy.tasks:
                raise
            report.warnings.append(f"not gated: {exc}")
            continue
        t = TaskGate(task, p.tier, metric=metric if metric == score else f"{metric}.{score}", max_drop=p.max_drop)
        _evidence(t, tb[task], tc[task], metric, score, sb, sc)
        _decide(t, p)
        report.tasks.append(t)
    return report


def _fmt(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:+.4f}"


def render_gate_text(r: GateReport, *, verbose: bool = True) -> str:
    """The verdict and its reasons first, then one line per task (with its reasons when ``verbose``)."""
    lines = [f"{r.verdict}: {'; '.join(r.verdict_reasons())}", f"exit status {EXIT[r.verdict]}", "",
             f"policy:    {r.policy_file}", f"baseline:  {r.baseline_dir}", f"candidate: {r.candidate_dir}", "",
             f"  {'task':<24} {'tier':<11} {'status':<22} {'metric':<22} {'delta':>8}  max_drop"]
    for t in r.tasks:
        lines.append(f"  {t.task:<24} {t.tier:<11} {t.status:<22} {t.metric or '-':<22} {_fmt(t.delta):>8}  "
                     f"{t.max_drop:g}")
        if verbose:
            lines += [f"      - {x}" for x in [*t.reasons, *([t.evidence] if t.evidence else [])]]
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"
