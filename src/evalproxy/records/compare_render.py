"""A comparison as text and as a page: the verdict first, then scores with intervals (and a plot of the deltas), then
what differs, then the samples (flips first).

The page is one self-contained file (inline CSS and SVG, no script: its Content-Security-Policy forbids any); every
string that comes from a run (config, questions, answers) is autoescaped by jinja2. The text never prints a raw line
break from a run: questions, answers and values are shown as JSON strings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jinja2

from evalproxy.records.compare_checks import INERT, PLACE

if TYPE_CHECKING:
    from evalproxy.records.compare import Comparison
    from evalproxy.records.compare_scores import SampleRow, ScoreRow

HEADLINE = {"regression": "REGRESSION", "improvement": "IMPROVEMENT",
            "no significant change": "NO SIGNIFICANT CHANGE", "not comparable": "NOT COMPARABLE"}
CLIP = 160


def num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def one_line(s: str | None, n: int = CLIP) -> str:
    """A run's text on one line: a JSON string (line breaks as ``\\n``), clipped to ``n`` characters."""
    if s is None:
        return "(none)"
    return json.dumps(s if len(s) <= n else s[: n - 3] + "...", ensure_ascii=False)


def _test_text(r: ScoreRow) -> str:
    p = "-" if r.p_value is None else f"{r.p_value:.3g}"
    over = f" over {r.n} paired samples" if r.n else ""
    return f"{r.method}{over}, p={p}"


def _move(r: ScoreRow) -> str:
    ci = f", 95% CI {interval(r.delta_ci)}" if r.delta_ci else ""
    return f"{r.label} {num(r.baseline)} -> {num(r.candidate)} (delta {num(r.delta)}{ci}; {_test_text(r)})"


def reason(c: Comparison) -> str:
    """Why the verdict is what it is, in one sentence."""
    if c.verdict == "not comparable":
        names = ", ".join(x.name for x in c.differences)
        return (f"{len(c.differences)} setting(s) that could change the answers differ: {names} "
                "(if that is the difference under test, name it with --vary)")
    if c.verdict in ("regression", "improvement"):
        rows = c.breaches or c.regressions if c.verdict == "regression" else c.improvements
        more = f"; and {len(rows) - 1} more" if len(rows) > 1 else ""
        why = f"; {rows[0].breach}" if rows[0].breach else ""
        return _move(rows[0]) + why + more
    moved = [r for r in c.scores if r.delta is not None]
    if not moved:
        return "no score is in both runs"
    return f"{len(moved)} score(s), none moved beyond noise (p >= {c.alpha:g})"


def exit_text(c: Comparison) -> str:
    code = c.exit_code
    if code == 2:
        return "exit status 2: not comparable"
    if code == 1:
        why = "a --max-drop breach" if c.breaches else "--fail-on regression"
        return f"exit status 1: regression ({why})"
    if c.verdict == "regression":
        return "exit status 0: the regression does not fail this command (give --fail-on regression or --max-drop)"
    return f"exit status 0: {c.verdict}"


def _scores_text(c: Comparison) -> list[str]:
    lines = ["scores (baseline -> candidate, 95% intervals):"]
    for r in c.scores:
        mark = "  REGRESSION" if r in c.regressions else "  IMPROVEMENT" if r in c.improvements else ""
        group = " (group)" if r.section == "groups" else ""
        lines.append(f"  {r.label}{group}: {num(r.baseline)} {interval(r.baseline_ci)} -> {num(r.candidate)} "
                     f"{interval(r.candidate_ci)}  delta {num(r.delta)} {interval(r.delta_ci)}  "
                     f"{_test_text(r)}{mark}")
        if r.breach:
            lines.append(f"    BREACH: {r.breach}")
    if not c.scores:
        lines.append("  (no scores in either run)")
    return lines


def _differs_text(c: Comparison) -> list[str]:
    lines = ["what differs:"]
    for x in c.checks:
        if x.same:
            continue
        tag = "varied" if x.varied else "DIFFERS" if x.counts else "not counted"
        say = x.detail if x.detail and x.counts else f"{one_line(x.baseline)} in baseline, " \
                                                     f"{one_line(x.candidate)} in candidate"
        extra = f" ({x.detail})" if not x.counts and x.detail else ""
        lines.append(f"  - [{tag}] {x.name}: {say}{extra}")
    if len(lines) == 1:
        lines.append("  nothing: endpoint, chain, generation parameters, tasks, prompts and versions agree")
    for x in c.checks:
        if x.varied and x.same:
            lines.append(f"  - [varied] {x.name}: declared with --vary, but the same in both runs")
    return lines


def _sample_text(r: SampleRow) -> list[str]:
    def grade(v: float) -> str:
        return ("right" if v >= 0.5 else "wrong") if v in (0.0, 1.0) else f"{v:.3g}"

    head = {"regressed": "right -> wrong", "improved": "wrong -> right", None: "answer changed"}[r.flip]
    return [f"  [{r.task}/{r.sample_id}] {head} ({r.metric})",
            f"      question:  {one_line(r.input)}",
            f"      target:    {one_line(r.target)}",
            f"      baseline:  {one_line(r.baseline_answer)} ({grade(r.baseline_value)})",
            f"      candidate: {one_line(r.candidate_answer)} ({grade(r.candidate_value)})"]


def _samples_text(c: Comparison, show_flips: bool) -> list[str]:
    lines = []
    if c.paired_samples:
        lines.append(f"samples: {c.paired_samples} paired (task, metric, sample) results; flips: "
                     f"{c.flips_regressed} right -> wrong, {c.flips_improved} wrong -> right")
        if show_flips:
            lines += [x for r in c.samples if r.flip for x in _sample_text(r)]
        elif c.flips_regressed or c.flips_improved:
            lines.append("  (--show-flips lists them with their questions)")
    if c.pairs_compared:
        lines.append(f"answers changed: {c.changed_total} of {c.pairs_compared} paired "
                     f"{'samples' if c.paired_samples else 'prompts'} (from {c.changed_source})")
        if not show_flips:
            lines += [f"  [{ch.key}] {one_line(ch.prompt, 80)}: baseline {one_line(ch.baseline, 60)}, "
                      f"candidate {one_line(ch.candidate, 60)}" for ch in c.changed]
    else:
        lines.append("answers: none to compare (no per-sample answers from the harness in both runs, and no stored "
                     "answers for paired requests)")
    return lines


def _distributions_text(c: Comparison) -> list[str]:
    lines = ["distributions (baseline -> candidate):"] if c.distributions else []
    for d in c.distributions:
        if "n" in d.baseline or "n" in d.candidate:
            parts = [f"{k} {num(d.baseline.get(k))} -> {num(d.candidate.get(k))}"
                     for k in ("n", "mean", "p50", "p90", "p99", "max")]
        else:
            keys = list(dict.fromkeys([*d.baseline, *d.candidate]))
            parts = [f"{k} {d.baseline.get(k, 0)} -> {d.candidate.get(k, 0)}" for k in keys]
        lines.append(f"  {d.name}: " + ", ".join(parts))
    return lines


def render_text(c: Comparison, *, show_flips: bool = False) -> str:
    """The verdict on the first line, its exit status on the second; then scores, differences and samples."""
    lines = [f"{HEADLINE[c.verdict]}: {reason(c)}", exit_text(c), "",
             f"baseline:  {c.baseline_dir}", f"candidate: {c.candidate_dir}"]
    if c.vary:
        lines.append(f"varied (the difference under test): {', '.join(c.vary)}")
    for block in (_scores_text(c), _differs_text(c), _samples_text(c, show_flips), _distributions_text(c)):
        if block:
            lines += ["", *block]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ page

PLOT_WIDTH = 720
PLOT_LABEL = 260
PLOT_ROW = 28


def plot(c: Comparison) -> dict[str, Any] | None:
    """Geometry of the per-task delta plot (an inline SVG drawn by the template): a dot per delta, a bar for its 95%
    interval, a line at zero; red for a drop beyond noise, green for a rise, grey within noise."""
    rows = [r for r in c.scores if r.delta is not None]
    if not rows:
        return None
    reach = max([abs(r.delta or 0.0) for r in rows] + [abs(v) for r in rows if r.delta_ci for v in r.delta_ci])
    reach = max(reach * 1.1, 0.05)
    span = PLOT_WIDTH - PLOT_LABEL - 70
    zero = PLOT_LABEL + span / 2

    def x(v: float) -> float:
        return round(zero + v / reach * span / 2, 1)

    items = []
    for i, r in enumerate(rows):
        colour = "bad" if r in c.regressions else "good" if r in c.improvements else "flat"
        lo, hi = r.delta_ci if r.delta_ci else (r.delta or 0.0, r.delta or 0.0)
        items.append({"label": r.label + (" (group)" if r.section == "groups" else ""),
                      "y": 20 + i * PLOT_ROW, "x": x(r.delta or 0.0), "lo": x(max(lo, -reach)),
                      "hi": x(min(hi, reach)), "colour": colour, "value": f"{r.delta:+.3g}"})
    return {"width": PLOT_WIDTH, "height": 30 + len(rows) * PLOT_ROW, "zero": round(zero, 1), "items": items,
            "left": x(-reach), "right": x(reach), "reach": f"{reach:.2g}", "value_x": PLOT_WIDTH - 60,
            "label_x": PLOT_LABEL - 10}


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evalproxy.records", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render_html(c: Comparison) -> str:
    """The page (see the module docstring)."""
    shown = [x for x in c.checks if not x.same or x.varied]
    quiet = [x for x in c.checks if x.same and not x.varied]
    return _ENV.get_template("compare.html.j2").render(
        c=c, num=num, interval=interval, headline=HEADLINE[c.verdict], reason=reason(c), exit_text=exit_text(c),
        plot=plot(c), shown=shown, quiet=quiet, inert=INERT, place=PLACE,
        flips=[r for r in c.samples if r.flip], others=[r for r in c.samples if not r.flip])
