"""How the scores moved, with intervals, and which samples flipped.

Scores: McNemar (exact binomial for few discordant pairs) when the paired per-sample results are all 0/1, a seeded
paired bootstrap for other per-sample results, else a z test from the harnesses' stderr. Higher is taken as better.
Each side gets a 95% interval (Wilson's for 0/1 results, Student's t otherwise, else the harness's stderr) and so does
the delta (Student's t on the paired differences, else from both stderrs). Paired tests run only over the samples
both runs graded; a row says how many.

Samples: for each task and metric, the samples both runs graded, with the harness's question, target and both
answers; a *flip* is a 0/1 result that changed (right -> wrong is a regression, wrong -> right an improvement).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from evalproxy.adapter.core.intervals import score_interval
from evalproxy.records.harnesses.base import SampleScore
from evalproxy.records.stats import (
    Interval,
    TestResult,
    is_binary,
    mcnemar,
    mean_ci,
    paired_bootstrap,
    paired_delta_ci,
    stderr_z,
    unpaired_delta_ci,
)

if TYPE_CHECKING:
    from evalproxy.records.compare import Run
    from evalproxy.records.results import Score

Flip = Literal["regressed", "improved"]


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
    """Paired samples the test ran over (0: the test did not pair samples)."""
    detail: str = ""
    baseline_ci: Interval | None = None
    candidate_ci: Interval | None = None
    delta_ci: Interval | None = None
    breach: str = ""
    """Why this row breaches ``--max-drop`` (empty: it does not)."""

    @property
    def label(self) -> str:
        name = self.metric if self.metric == self.score else f"{self.metric}.{self.score}"
        return f"{self.task} {name}"


@dataclass
class SampleRow:
    """One sample both runs graded: the harness's question and target, each side's answer and result."""

    task: str
    sample_id: str
    metric: str
    input: str | None
    target: str | None
    baseline_answer: str | None
    candidate_answer: str | None
    baseline_value: float
    candidate_value: float

    @property
    def flip(self) -> Flip | None:
        right_b, right_c = self.baseline_value >= 0.5, self.candidate_value >= 0.5
        if not (is_binary([self.baseline_value]) and is_binary([self.candidate_value])) or right_b == right_c:
            return None
        return "regressed" if right_b else "improved"

    @property
    def answer_changed(self) -> bool:
        return self.baseline_answer != self.candidate_answer


Per = dict[tuple[str, str], dict[str, SampleScore]]


def by_task_metric(samples: list[SampleScore]) -> Per:
    out: Per = defaultdict(dict)
    for s in samples:
        out[(s.task, s.metric)][s.sample_id] = s
    return out


def _test(per_b: dict[str, SampleScore], per_c: dict[str, SampleScore], *, seed: int,
          iterations: int) -> tuple[TestResult, Interval | None, Interval | None, Interval | None] | None:
    common = sorted(set(per_b) & set(per_c))
    if not common:
        return None
    xb = [per_b[k].value for k in common]
    xc = [per_c[k].value for k in common]
    test = mcnemar(xb, xc) if is_binary(xb) and is_binary(xc) else \
        paired_bootstrap(xb, xc, iterations=iterations, seed=seed)
    return test, mean_ci(xb), mean_ci(xc), paired_delta_ci(xb, xc)


def _row(section: str, task: str, metric: str, name: str, sb: Score | None, sc: Score | None,
         pairs: tuple[dict[str, SampleScore], dict[str, SampleScore]] | None, *, alpha: float, seed: int,
         iterations: int) -> ScoreRow:
    vb = sb.value if sb is not None else None
    vc = sc.value if sc is not None else None
    seb = sb.stats.stderr if sb is not None and sb.stats else None
    sec = sc.stats.stderr if sc is not None and sc.stats else None
    delta = vc - vb if vb is not None and vc is not None else None
    row = ScoreRow(section, task, metric, name, vb, vc, delta, "none", None, False, 0, "score in one run only")
    # as the run's report shows them (Wilson's interval for a share of right answers)
    row.baseline_ci = score_interval(vb, seb, sb.stats.count) if vb is not None and sb and sb.stats else None
    row.candidate_ci = score_interval(vc, sec, sc.stats.count) if vc is not None and sc and sc.stats else None
    if delta is None:
        return row
    paired = _test(*pairs, seed=seed, iterations=iterations) if pairs is not None else None
    if paired is not None:
        test, row.baseline_ci, row.candidate_ci, row.delta_ci = paired
        test_n = test.n
    else:
        test, test_n = stderr_z(delta, seb, sec), 0
        row.delta_ci = unpaired_delta_ci(delta, seb, sec)
    row.method, row.p_value, row.n, row.detail = test.method, test.p_value, test_n, test.detail
    row.significant = test.p_value is not None and test.p_value < alpha and bool(delta)
    return row


def paired_for(samples_b: Per, samples_c: Per, task: str, metric: str,
               score: str) -> tuple[dict[str, SampleScore], dict[str, SampleScore]] | None:
    """Both runs' per-sample results of one score: filed under the metric's name (lm-eval, inspect) or the score's
    (nemo-evaluator BYOB files each score key of ``pass@1`` under its own name)."""
    for name in (metric, score):
        key = (task, name)
        if key in samples_b and key in samples_c:
            return samples_b[key], samples_c[key]
    return None


def score_rows(base: Run, cand: Run, *, alpha: float, seed: int, iterations: int) -> list[ScoreRow]:
    """A row per task (and group), metric and score found in either run."""
    samples_b, samples_c = by_task_metric(base.samples), by_task_metric(cand.samples)
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
                    pairs = paired_for(samples_b, samples_c, task, metric, score) if section == "tasks" else None
                    rows.append(_row(section, task, metric, score, scb.get(score), scc.get(score), pairs,
                                     alpha=alpha, seed=seed, iterations=iterations))
    return rows


def sample_rows(base: Run, cand: Run) -> list[SampleRow]:
    """Every sample both runs graded (per task and metric), flips first (regressions, then improvements), then
    changed answers, then the rest, each group in sample order."""
    samples_b, samples_c = by_task_metric(base.samples), by_task_metric(cand.samples)
    rows = []
    for key in sorted(set(samples_b) & set(samples_c)):
        per_b, per_c = samples_b[key], samples_c[key]
        for sid in sorted(set(per_b) & set(per_c), key=natural):
            b, c = per_b[sid], per_c[sid]
            rows.append(SampleRow(key[0], sid, key[1], b.input or c.input, b.target or c.target, b.answer, c.answer,
                                  b.value, c.value))
    order = {"regressed": 0, "improved": 1, None: 2}
    rows.sort(key=lambda r: (order[r.flip], not r.answer_changed))
    return rows


def natural(s: str) -> tuple[str, int, str]:
    """Sample ids in their natural order: ``q2`` before ``q10``, numbers as numbers."""
    head = s.rstrip("0123456789")
    digits = s[len(head):]
    return head, int(digits) if digits and len(digits) < 19 else -1, s
