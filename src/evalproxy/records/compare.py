"""Compare two run directories: one verdict first, then how the scores moved, then what differs and what changed.

``compare_runs(baseline, candidate, answers=..., vary=..., max_drop=...)`` reads each run's ``results.yaml``,
``requests.jsonl`` (the request ledger), ``samples.jsonl`` (the harness's per-sample results: question, target,
answer, grade) and, where ``results.yaml`` carries none, ``adapter_config.yaml``.

The verdict is one of four words, the same in the text, the page and the exit status:

* ``not comparable`` (exit 2): a setting that could change the answers differs and was not declared with ``vary``
  (see :mod:`evalproxy.records.compare_checks`);
* ``regression``: a score dropped beyond noise (exit 1 with ``fail_on="regression"``), or dropped by more than
  ``max_drop`` (exit 1): beyond noise, or at all with ``strict``;
* ``improvement``: a score rose beyond noise and none dropped (exit 0);
* ``no significant change`` (exit 0).

Scores and samples: :mod:`evalproxy.records.compare_scores`. What changed: the harness's own per-sample answers when
both runs have them, else the paired requests' answers through the ``answers(run_dir, prompt_key)`` callable.
Latency, tokens and finish reasons side by side. Rendering: :mod:`evalproxy.records.compare_render`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from evalproxy.adapter.config.files import dig
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.adapter.server.output import CONFIG_FILE
from evalproxy.records.compare_checks import Check, apply_vary, bounded, comparability, pair_requests
from evalproxy.records.compare_scores import SampleRow, ScoreRow, natural, sample_rows, score_rows
from evalproxy.records.explain import explain_miss
from evalproxy.records.harnesses.base import SampleScore, read_samples
from evalproxy.records.observed import LedgerEntry, prompt_key, read_ledger
from evalproxy.records.results import RunRecord, read_results
from evalproxy.records.stats import quantile

Answers = Callable[[Path, str], str | None]
RequestBodies = Callable[[Path], Iterable[Mapping[str, Any]]]
FailOn = Literal["none", "regression"]
Verdict = Literal["regression", "improvement", "no significant change", "not comparable"]

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_NOT_COMPARABLE = 2
EXIT_USAGE = 3
"""A usage or I/O error (a missing run dir, a --vary word naming nothing, a page that cannot be written)."""

log = logging.getLogger("evalproxy.compare")

__all__ = ["ChangedAnswer", "Check", "Comparison", "Distribution", "SampleRow", "ScoreRow", "compare_runs"]


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
    """Paired prompts (or samples) whose answers were compared: what ``changed_total`` counts among."""
    changed_source: str = ""
    """Where the answers came from: the harness's samples, or the paired requests' stored answers."""
    samples: list[SampleRow] = field(default_factory=list)
    """Samples both runs graded, flips first (at most ``max_samples`` of them)."""
    paired_samples: int = 0
    flips_regressed: int = 0
    flips_improved: int = 0
    distributions: list[Distribution] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    vary: list[str] = field(default_factory=list)
    fail_on: FailOn = "none"
    max_drop: float | None = None
    strict: bool = False
    alpha: float = 0.05

    @property
    def comparable(self) -> bool:
        return all(c.same for c in self.checks if c.counts)

    @property
    def differences(self) -> list[Check]:
        return [c for c in self.checks if c.counts and not c.same]

    @property
    def regressions(self) -> list[ScoreRow]:
        return [r for r in self.scores if r.significant and r.delta is not None and r.delta < 0]

    @property
    def improvements(self) -> list[ScoreRow]:
        return [r for r in self.scores if r.significant and r.delta is not None and r.delta > 0]

    @property
    def breaches(self) -> list[ScoreRow]:
        """Rows whose drop breaches ``max_drop`` (see :func:`mark_breaches`)."""
        return [r for r in self.scores if r.breach]

    @property
    def verdict(self) -> Verdict:
        if not self.comparable:
            return "not comparable"
        if self.regressions or self.breaches:
            return "regression"
        if self.improvements:
            return "improvement"
        return "no significant change"

    @property
    def exit_code(self) -> int:
        """2 not comparable; 1 a regression that fails (``fail_on="regression"``, or a ``max_drop`` breach); else 0."""
        if not self.comparable:
            return EXIT_NOT_COMPARABLE
        if self.breaches or (self.fail_on == "regression" and self.regressions):
            return EXIT_REGRESSION
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["comparable"] = self.comparable
        d["exit_code"] = self.exit_code
        d["differences"] = [c.name for c in self.differences]
        d["varied"] = [c.name for c in self.checks if c.varied]
        d["breaches"] = [f"{r.label}: {r.breach}" for r in self.breaches]
        for row, out in zip(self.samples, d["samples"], strict=True):
            out["flip"] = row.flip
        return d

    def to_text(self, *, show_flips: bool = False) -> str:
        from evalproxy.records.compare_render import render_text

        return render_text(self, show_flips=show_flips)

    def to_html(self) -> str:
        from evalproxy.records.compare_render import render_html

        return render_html(self)


def mark_breaches(rows: Sequence[ScoreRow], max_drop: float, *, strict: bool) -> None:
    """Name each task row whose score dropped by more than ``max_drop``: beyond noise (as ``nel compare --max-drop``
    blocks only a significant drop), or, with ``strict``, on its point estimate alone."""
    for r in rows:
        if r.delta is None or -r.delta <= max_drop:
            continue
        if r.significant:
            r.breach = f"dropped {-r.delta:.4g} > --max-drop {max_drop:g}, beyond noise (p={r.p_value:.3g})"
        elif strict:
            p = "no test" if r.p_value is None else f"p={r.p_value:.3g}"
            r.breach = f"dropped {-r.delta:.4g} > --max-drop {max_drop:g} (within noise, {p}; --strict counts it)"


# ---------------------------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One run directory as compare and gate read it: its record, request ledger, per-sample results and config."""

    path: Path
    record: RunRecord
    ledger: list[LedgerEntry]
    samples: list[SampleScore]
    adapter: dict[str, Any]


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run directory (bounded: values too large to compare stand in as ``TooLarge``); a directory
    without ``results.yaml`` reads as an empty record."""
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
    if not adapter and (p / CONFIG_FILE).exists():
        loaded = read_yaml(p / CONFIG_FILE)
        loaded = loaded if isinstance(loaded, dict) else {}  # a scalar or a list is no config
        inner = dig(loaded, "target", "api_endpoint", "adapter_config") if "target" in loaded else (
            dig(loaded, "adapter_config") if "adapter_config" in loaded else loaded)
        adapter = dict(inner) if isinstance(inner, dict) else {}
    ledger = [e if all(bounded(v) is v for v in e.params.values())
              else replace(e, params={k: bounded(v) for k, v in e.params.items()}) for e in read_ledger(p)]
    return Run(p, record, ledger, list(read_samples(p)), adapter)


# ---------------------------------------------------------------------------------------------------- what changed


def _changed_from_ledger(base: Run, cand: Run, answers: Answers,
                         limit: int) -> tuple[list[ChangedAnswer], int, int]:
    changed: list[ChangedAnswer] = []
    total = 0
    pairs = 0
    done: set[str] = set()
    for eb, ec in pair_requests(base.ledger, cand.ledger):
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
                changed.append(ChangedAnswer(f"request {eb.input_key[:12]}", eb.input_key, ab, ac))
    return changed, total, pairs


def _changed_from_samples(rows: list[SampleRow], limit: int) -> tuple[list[ChangedAnswer], int, int]:
    """Changed answers among the paired samples (one per task and sample: a sample graded by several metrics has
    one answer)."""
    seen: dict[tuple[str, str], SampleRow] = {}
    for r in rows:
        if r.baseline_answer is not None and r.candidate_answer is not None:
            seen.setdefault((r.task, r.sample_id), r)
    ordered = sorted(seen.values(), key=lambda r: (r.task, natural(r.sample_id)))
    changed = [ChangedAnswer(f"{r.task}/{r.sample_id}", r.input or f"{r.task} sample {r.sample_id}",
                             r.baseline_answer, r.candidate_answer) for r in ordered if r.answer_changed]
    return changed[:limit], len(changed), len(ordered)


def _summary(values: list[float]) -> dict[str, Any]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"n": len(v), "mean": r(sum(v) / len(v)), "p50": r(quantile(v, 0.5)), "p90": r(quantile(v, 0.9)),
            "p99": r(quantile(v, 0.99)), "max": r(v[-1]), "sum": r(sum(v))}


def _distributions(base: Run, cand: Run) -> list[Distribution]:
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


def _explain_one_run_prompts(base: Run, cand: Run, bodies: RequestBodies, limit: int) -> list[dict[str, Any]]:
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
    max_samples: int = 200,
    fail_on: FailOn = "none",
    vary: Sequence[str] = (),
    max_drop: float | None = None,
    strict: bool = False,
    alpha: float = 0.05,
    seed: int = 0,
    bootstrap_iterations: int = 2000,
) -> Comparison:
    """Compare two run directories (see the module docstring). ``answers(run_dir, prompt_key)`` gives the answer
    text stored for a ledger entry (used when the harness kept no per-sample answers); ``request_bodies(run_dir)``
    the stored request bodies, used to explain prompts that exist in only one run. ``vary`` names the differences
    under test (:func:`~evalproxy.records.compare_checks.apply_vary`); ``max_drop`` is the largest drop of a task
    score allowed (:func:`mark_breaches`)."""
    base, cand = load_run(baseline), load_run(candidate)
    result = Comparison(str(base.path), str(cand.path), fail_on=fail_on, alpha=alpha, vary=list(vary),
                        max_drop=max_drop, strict=strict)
    result.checks = comparability(base, cand)
    apply_vary(result.checks, vary)
    result.scores = score_rows(base, cand, alpha=alpha, seed=seed, iterations=bootstrap_iterations)
    if max_drop is not None:
        mark_breaches([r for r in result.scores if r.section == "tasks"], max_drop, strict=strict)
    rows = sample_rows(base, cand)
    result.paired_samples = len(rows)
    result.flips_regressed = sum(1 for r in rows if r.flip == "regressed")
    result.flips_improved = sum(1 for r in rows if r.flip == "improved")
    result.samples = rows[:max_samples]
    changed = _changed_from_samples(rows, max_changed)
    if changed[2]:
        result.changed_source = "the harness's per-sample answers"
    elif answers is not None and base.ledger and cand.ledger:
        changed = _changed_from_ledger(base, cand, answers, max_changed)
        result.changed_source = "the answers stored for the paired requests"
    result.changed, result.changed_total, result.pairs_compared = changed
    result.distributions = _distributions(base, cand)
    if request_bodies is not None:
        result.explained = _explain_one_run_prompts(base, cand, request_bodies, max_changed)
    return result
