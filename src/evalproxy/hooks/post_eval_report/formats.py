"""The report as markdown, CSV and LaTeX (NeMo Evaluator 0.4's ``output.report`` formats besides html and json).

Each is rendered from the same data as ``evalproxy_report.json`` (:func:`build_report`'s): the run's summary, its
scores when the data has them, the statistics, and, in markdown, the first request/response pairs and the failures.
CSV is one long table (``section,name,value``) that a spreadsheet or pandas reads as it is; LaTeX is a standalone
``tabular`` per section to ``\\input`` into a paper. Model output is escaped for each format (a ``|`` in an answer
never breaks a markdown table, a ``%`` never comments out a LaTeX line). Pure functions of plain data: the hook writes
the files, in its thread.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import Any

FILES = {"markdown": "report.md", "csv": "report.csv", "latex": "report.tex"}
"""Each format's file in the run dir (0.4's extensions)."""
_SECTIONS = ("response_stats", "caching", "reasoning")
_CLIP = 300


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _flat(prefix: str, obj: Any) -> Iterator[tuple[str, Any]]:
    """(dotted name, scalar) for every scalar inside ``obj``; lists of scalars joined by commas."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(obj, list) and all(_scalar(v) for v in obj):
        yield prefix, ", ".join("" if v is None else str(v) for v in obj)
    elif _scalar(obj):
        yield prefix, obj


def _score_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of the scores, if the data holds any: the run record's rows as the hook reads them
    (:func:`~evalproxy.hooks.post_eval_report.run_scores`: ``task.metric.score`` with its value, stderr and 95 %
    interval, then the note, type and params), or any other mapping where a score is a value or ``{value, stats}``."""
    scores = report.get("scores")
    if not (isinstance(scores, dict) and isinstance(scores.get("rows"), list)):
        return list(_flat("", _scores_values(scores)))
    out: list[tuple[str, Any]] = []
    for row in scores["rows"]:
        if not isinstance(row, dict):
            continue
        name = ".".join(str(row[k]) for k in ("task", "metric", "score") if row.get(k) is not None)
        out.append((name, row.get("value")))
        out += [(f"{name}.{k}", row[k]) for k in ("stderr", "count") if _scalar(row.get(k)) and row.get(k) is not None]
        if isinstance(row.get("ci95"), list):
            out.append((f"{name}.ci95", ", ".join(str(v) for v in row["ci95"])))
    return out + list(_flat("", {k: v for k, v in scores.items() if k != "rows"}))


def _scores_values(scores: Any) -> Any:
    """Scores with each ``{value, stats}`` reduced to its value (the stats are the statistics' business)."""
    if isinstance(scores, dict):
        if "value" in scores and _scalar(scores["value"]):
            return scores["value"]
        return {k: _scores_values(v) for k, v in scores.items()}
    return scores


def rows(report: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(section, name, value) of everything the tables show: summary, scores, statistics."""
    for name, v in _flat("", report.get("summary") or {}):
        yield "summary", name, v
    for name, v in _score_rows(report):
        yield "scores", name, v
    stats = report.get("statistics") or {}
    for section in _SECTIONS:
        for name, v in _flat("", stats.get(section) or {}):
            yield section, name, v


def _md(v: Any, clip: int = _CLIP) -> str:
    text = "" if v is None else str(v)
    if len(text) > clip:
        text = text[:clip] + f"... ({len(text)} chars)"
    # HTML in the text is shown, not run (markdown renders raw HTML): no tag survives; then the line breaks are added.
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def render_markdown(report: dict[str, Any]) -> str:
    summary = report.get("summary") or {}
    out = [f"# evalproxy report: {_md(summary.get('model') or 'model')}", "",
           f"Generated {_md(report.get('generated_at'))} from `{_md(report.get('output_dir'))}`.", ""]
    by_section: dict[str, list[tuple[str, Any]]] = {}
    for section, name, v in rows(report):
        by_section.setdefault(section, []).append((name, v))
    for section, entries in by_section.items():
        out += [f"## {section}", "", "| name | value |", "| --- | --- |"]
        out += [f"| {_md(n)} | {_md(v)} |" for n, v in entries]
        out.append("")
    pairs = report.get("pairs") or []
    out += ["## requests", ""]
    if not pairs:
        out += [_md(report.get("pairs_note") or "no request/response pairs were saved"), ""]
    else:
        out += ["| # | status | last message | answer | finish |", "| --- | --- | --- | --- | --- |"]
        for p in pairs:
            messages = p.get("messages") or [{}]
            answer = (p.get("answers") or [{}])[0]
            out.append(f"| {_md(p.get('request_id'))} | {_md(p.get('status'))} | "
                       f"{_md(messages[-1].get('content'))} | {_md(answer.get('content'))} | "
                       f"{_md(answer.get('finish_reason'))} |")
        out.append("")
    failures = report.get("failures") or []
    if failures:
        out += ["## failures", "", "| # | status | error |", "| --- | --- | --- |"]
        out += [f"| {_md(f.get('request_id'))} | {_md(f.get('status'))} | {_md(f.get('error'))} |" for f in failures]
        out.append("")
    return "\n".join(out)


def render_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "name", "value"])
    for section, name, v in rows(report):
        w.writerow([section, name, "" if v is None else v])
    return buf.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(v: Any) -> str:
    text = "" if v is None else str(v)
    text = text[:_CLIP] + "..." if len(text) > _CLIP else text
    return "".join(_LATEX.get(c, c) for c in text).replace("\n", " ")


def render_latex(report: dict[str, Any]) -> str:
    out = ["% evalproxy report; \\input{report.tex} needs no package beyond LaTeX's own"]
    section = None
    for sec, name, v in rows(report):
        if sec != section:
            if section is not None:
                out += ["\\hline", "\\end{tabular}", ""]
            out += [f"% {sec}", "\\begin{tabular}{ll}", "\\hline", f"\\multicolumn{{2}}{{l}}{{{_tex(sec)}}} \\\\",
                    "\\hline"]
            section = sec
        out.append(f"{_tex(name)} & {_tex(v)} \\\\")
    if section is not None:
        out += ["\\hline", "\\end{tabular}"]
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "markdown": render_markdown, "csv": render_csv, "latex": render_latex}
