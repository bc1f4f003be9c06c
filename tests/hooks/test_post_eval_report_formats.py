"""post_eval_report's markdown, CSV and LaTeX formats (NeMo 0.4's output.report): rendered from the report's data,
with model output escaped for each format."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from evalproxy.hooks.post_eval_report import run_scores
from evalproxy.hooks.post_eval_report.formats import render_csv, render_latex, render_markdown
from evalproxy.simulator import SimulatedModel

TRICKY = "a | b % c_d & $x$\nsecond line"


async def test_formats_written_by_a_run(make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
    """A run asking for markdown, csv and latex gets report.md, report.csv and report.tex beside report.json: the
    model, the statistics and (in markdown) the pairs, an answer's | and newline escaped so the table holds."""
    sim.answers = lambda prompt: TRICKY
    proxy = await make_proxy({"interceptors": [
        {"name": "caching", "config": {"save_requests": True, "reuse_cached_responses": True}}, "endpoint",
        "response_stats"],
        "post_eval_hooks": [{"name": "post_eval_report", "config": {
            "report_types": ["markdown", "csv", "latex", "json"]}}]}, model_id="sim-model")
    for i in range(2):
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}],
                                                           "temperature": 0})
        assert r.status == 200
    await proxy.close()
    out = tmp_path / "out"
    md = (out / "report.md").read_text()
    assert md.startswith("# evalproxy report: sim-model")
    assert "| model | sim-model |" in md and "a \\| b % c_d & $x$<br>second line" in md
    table = [line for line in md.splitlines() if line.startswith(("| 0 | 200 |", "| 1 | 200 |"))]
    assert len(table) == 2 and all(line.count(" | ") == 4 for line in table)
    rows = list(csv.reader(io.StringIO((out / "report.csv").read_text())))
    assert rows[0] == ["section", "name", "value"]
    assert ["response_stats", "count", "2"] in rows and ["summary", "model", "sim-model"] in rows
    tex = (out / "report.tex").read_text()
    assert "\\begin{tabular}{ll}" in tex and tex.count("\\begin{tabular}") == tex.count("\\end{tabular}")
    assert (out / "report.json").exists()


def test_scores_and_escaping() -> None:
    """Scores, when the data has them, come first after the summary, a {value, stats} shown by its value; LaTeX and
    CSV escape what their formats need."""
    report = {"summary": {"model": "m_1"}, "scores": {"gsm8k": {"accuracy": {"value": 0.5, "stats": {"n": 2}}}},
              "statistics": {"caching": {"hits": 1}}, "pairs": []}
    md = render_markdown(report)
    assert "## scores" in md and "| gsm8k.accuracy | 0.5 |" in md and "no request/response pairs" in md
    assert md.index("## summary") < md.index("## scores") < md.index("## caching")
    assert list(csv.reader(io.StringIO(render_csv(report))))[2] == ["scores", "gsm8k.accuracy", "0.5"]
    tex = render_latex(report)
    assert "m\\_1" in tex and "gsm8k.accuracy & 0.5" in tex


def test_markdown_shows_html_in_model_output_as_text() -> None:
    """An answer holding HTML is shown in report.md as text: no tag of it survives for a markdown viewer to run."""
    report = {"summary": {"model": "<b>m</b>"}, "statistics": {}, "pairs": [
        {"request_id": 0, "status": 200, "messages": [{"role": "user", "content": "q"}],
         "answers": [{"content": "<img src=x onerror=alert(1)>", "finish_reason": "stop"}]}]}
    md = render_markdown(report)
    assert "<img" not in md and "<b>" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md.replace("\\", "")


def test_the_run_records_scores_reach_every_format(tmp_path: Path) -> None:
    """The scores the hook reads from a real results.yaml (rows of task, metric, score) are in report.md, .csv and
    .tex by name, with their stderr and 95 % interval, beside the task type."""
    (tmp_path / "results.yaml").write_text(
        "config: {type: gsm8k, params: {limit_samples: 20}}\n"
        "results:\n  tasks:\n    gsm8k:\n      metrics:\n        exact_match:\n          scores:\n"
        "            strict: {value: 0.55, stats: {stderr: 0.114, count: 20}}\n")
    report = {"summary": {"model": "m"}, "scores": run_scores(tmp_path), "statistics": {}, "pairs": []}
    assert "| gsm8k.exact_match.strict | 0.55 |" in render_markdown(report)
    csv_rows = list(csv.reader(io.StringIO(render_csv(report))))
    assert ["scores", "gsm8k.exact_match.strict", "0.55"] in csv_rows
    assert ["scores", "gsm8k.exact_match.strict.stderr", "0.114"] in csv_rows
    assert any(r[1] == "gsm8k.exact_match.strict.ci95" and r[2].count(",") == 1 for r in csv_rows)
    assert ["scores", "type", "gsm8k"] in csv_rows
    assert "gsm8k.exact\\_match.strict & 0.55" in render_latex(report)


def test_a_malformed_run_record_gives_a_note_not_a_crash(tmp_path: Path) -> None:
    """A results.yaml whose metrics are a list, or whose metric is a list, gives the report no score rows and a note
    (the report is still written), never an exception."""
    (tmp_path / "results.yaml").write_text(
        "results:\n  tasks:\n    a: {metrics: [1, 2]}\n    b: {metrics: {acc: [1]}}\n")
    scores = run_scores(tmp_path)
    assert [(r["task"], r["value"]) for r in scores["rows"]] == [("a", None)]
    assert scores["note"] is None
