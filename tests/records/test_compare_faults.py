"""issue 20's compare faults, each on run directories made by the records package's own writers and read through the
command line's own entry point (``evalproxy compare``): every test here failed on main before the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from evalproxy.cli import main
from evalproxy.records import RequestLedger, build_record, compare_runs, write_results
from evalproxy.records.harnesses import SampleScore, write_samples
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import Results, ScoreStats

N = 10


def question(i: int) -> str:
    return f"What is {i} + {i + 3}?\nAnswer with the number only."


def make_run(run_dir: Path, *, wrong: set[int] = frozenset(), system: str = "Be terse.",  # type: ignore[assignment]
             caching: dict[str, Any] | None = None, stop: list[str] | None = None) -> Path:
    """A run of ``N`` sums as `evalproxy run` records it: results.yaml, samples.jsonl with the harness's question,
    target and answer, and requests.jsonl whose bodies carry the system prompt the proxy injected."""
    values = [0.0 if i in wrong else 1.0 for i in range(N)]
    results = Results()
    mean = sum(values) / N
    add_score(results.tasks, "sums", "match", "accuracy", mean,
              ScoreStats(count=N, stderr=(mean * (1 - mean) / (N - 1)) ** 0.5))
    adapter = {"endpoint_type": "chat", "html_report_size": 5, "interceptors": [
        {"name": "system_message", "config": {"system_message": system}},
        {"name": "caching", "config": {"cache_dir": str(run_dir / "cache"), "reuse_cached_responses": True,
                                       **(caching or {})}},
        {"name": "endpoint"}, {"name": "response_stats"}]}
    write_results(run_dir, build_record(command="inspect eval sums.py", output_dir=run_dir,
                                        params={"temperature": 0.0}, results=results, model_id="m",
                                        endpoint_type="chat", adapter_config=adapter))
    samples = []
    for i in range(N):
        right = str(2 * i + 3)
        answer = str(2 * i + 4) if i in wrong else right
        samples.append(SampleScore("sums", f"q{i}", "match", values[i], answer=answer, input=question(i),
                                   target=right))
    write_samples(run_dir, samples)
    ledger = RequestLedger(run_dir, interval=0.01)
    for i in range(N):
        body: dict[str, Any] = {"model": "m", "temperature": 0.0, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": question(i)}]}
        if stop is not None:
            body["stop"] = stop
        ledger.record(body, status=200, latency_ms=10.0, completion_tokens=1, finish_reason="stop")
    ledger.close()
    return run_dir


def evalproxy(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A baseline and a candidate that gets 6 more sums wrong (McNemar exact p = 0.031)."""
    return make_run(tmp_path / "base"), make_run(tmp_path / "worse", wrong={1, 3, 4, 5, 6, 8})


def test_regression_headline_is_the_first_line_and_the_exit_status(
        pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A significant drop with --fail-on regression says REGRESSION on the first line, the exit status on the
    second, and exits 1; without --fail-on it still says REGRESSION and why it exits 0."""
    code, out, _ = evalproxy(capsys, "compare", *pair, "--fail-on", "regression")
    first, second = out.splitlines()[:2]
    assert code == 1 and first.startswith("REGRESSION: sums match.accuracy 1 -> 0.4 (delta -0.6")
    assert "mcnemar-exact over 10 paired samples, p=0.0312" in first
    assert second == "exit status 1: regression (--fail-on regression)"
    code, out, _ = evalproxy(capsys, "compare", *pair)
    assert code == 0 and out.startswith("REGRESSION: ") and "exit status 0: the regression does not fail" in out


def test_page_headline_is_the_verdict_not_a_green_comparable(pair: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The page opens with the verdict (a red REGRESSION block) before any table, not a green 'comparable' badge,
    and the settings that are the same sit folded under the differing ones."""
    page = tmp_path / "cmp.html"
    evalproxy(capsys, "compare", *pair, "--fail-on", "regression", "--html", page)
    html = page.read_text()
    verdict = re.search(r'<div id="verdict" class="headline (\w+)">\s*<div class="word">(.*?)</div>', html)
    assert verdict is not None and verdict.groups() == ("regression", "REGRESSION")
    assert 'verdict ok">comparable' not in html
    assert html.index('id="verdict"') < html.index("<table") and html.index('id="scores"') < html.index(
        'id="comparable"')
    assert "Nothing that could change the answers differs." in html and "<details><summary>" in html


def test_flips_name_the_question_target_and_both_answers(pair: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Flips come first, with the harness's question, the target, both answers and right/wrong on each side, in the
    text (--show-flips) and on the page; never a bare prompt hash."""
    page = tmp_path / "cmp.html"
    _, out, _ = evalproxy(capsys, "compare", *pair, "--show-flips", "--html", page)
    assert "flips: 6 right -> wrong, 0 wrong -> right" in out
    assert ('  [sums/q1] right -> wrong (match)\n      question:  "What is 1 + 4?\\nAnswer with the number only."\n'
            '      target:    "5"\n      baseline:  "5" (right)\n      candidate: "6" (wrong)') in out
    html = page.read_text()
    rows = re.findall(r"<tr><td><code>sums/(q\d+)</code><br>(.*?)</tr>", html, re.S)
    assert [sid for sid, _ in rows[:6]] == ["q1", "q3", "q4", "q5", "q6", "q8"]
    assert "right → wrong" in rows[0][1] and "What is 1 + 4?\nAnswer with the number only." in rows[0][1]
    assert '<span class="tag right">right</span>' in rows[0][1] and '<span class="tag wrong">wrong</span>' in rows[0][1]


def test_scores_carry_intervals_and_a_plot_of_the_deltas(pair: tuple[Path, Path]) -> None:
    """Each side and the delta get a 95% interval, and the page draws the delta with its interval in an inline SVG."""
    c = compare_runs(*pair)
    row = c.scores[0]
    assert row.baseline_ci is not None and row.baseline_ci[1] == pytest.approx(1.0)
    assert row.delta_ci == pytest.approx((-0.6 - 2.262 * (0.24 / 0.9) ** 0.5 / 10**0.5,
                                          -0.6 + 2.262 * (0.24 / 0.9) ** 0.5 / 10**0.5), abs=1e-3)
    html = c.to_html()
    svg = html[html.index('<svg id="deltas"'):html.index("</svg>")]
    assert svg.count("<circle") == 1 and 'class="bad"' in svg and ">sums match.accuracy<" in svg
    assert "delta -0.6 [-0.969, -0.231]" in c.to_text()


def test_stop_lists_print_without_raw_newlines(tmp_path: Path) -> None:
    """A stop list holding a newline shows as ["\\n"] on one line, in the check and in the text."""
    a = make_run(tmp_path / "a", stop=["\n"])
    b = make_run(tmp_path / "b", stop=["\n", "Question:"])
    c = compare_runs(a, b)
    stop = next(x for x in c.checks if x.name == "generation param stop")
    assert stop.baseline == '["\\n"] (10)' and stop.candidate == '["\\n", "Question:"] (10)'
    line = next(ln for ln in c.to_text().splitlines() if ln.startswith("  - [DIFFERS] generation param stop"))
    assert line.endswith('stop ["\\n"] in baseline, ["\\n", "Question:"] in candidate on 10 of 10 requests')


def test_paired_test_and_answer_count_agree(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Runs whose caches kept no answers still pair their samples: the text says how many, never '0 of 0' beside a
    paired test."""
    _, out, _ = evalproxy(capsys, "compare", *pair)
    assert "answers changed: 6 of 10 paired samples (from the harness's per-sample answers)" in out
    assert "0 of 0" not in out


def test_report_sizes_and_logging_never_count(tmp_path: Path) -> None:
    """caching.max_saved_requests, save_requests and the top-level html_report_size are shown, not counted."""
    a = make_run(tmp_path / "a", caching={"max_saved_requests": 5})
    b = make_run(tmp_path / "b", caching={"max_saved_requests": 50, "save_requests": True})
    c = compare_runs(a, b)
    assert c.comparable and c.verdict == "no significant change" and c.exit_code == 0
    shown = {x.name: x for x in c.checks if not x.same and x.name != "caching.cache_dir"}
    assert set(shown) == {"caching.max_saved_requests", "caching.save_requests"}
    assert all(not x.counts and "cannot change answers" in x.detail for x in shown.values())


def test_vary_system_prompt_is_a_comparable_paired_comparison(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A new system prompt against the old one is NOT COMPARABLE (exit 2) unless declared with --vary; declared, it
    is comparable, names the varied prompt and runs McNemar over the 10 paired samples."""
    a = make_run(tmp_path / "old", system="Be terse.")
    b = make_run(tmp_path / "new", system="Think, then answer.", wrong={2})
    code, out, _ = evalproxy(capsys, "compare", a, b)
    assert code == 2 and out.startswith("NOT COMPARABLE: 2 setting(s) that could change the answers differ: "
                                        "system_message.system_message, prompts")
    code, out, _ = evalproxy(capsys, "compare", a, b, "--vary", "system_message", "--json", tmp_path / "c.json")
    assert code == 0 and out.startswith("NO SIGNIFICANT CHANGE: 1 score(s), none moved beyond noise")
    assert "  - [varied] system_message.system_message: " in out
    assert "mcnemar-exact over 10 paired samples, p=1" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["comparable"] and doc["varied"] == ["system_message.system_message"] and doc["differences"] == []


def test_vary_naming_nothing_is_a_usage_error(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """--vary with a word that names no setting exits 3 and lists what can be named."""
    code, out, err = evalproxy(capsys, "compare", *pair, "--vary", "sytem_message")
    assert code == 3 and out == "" and "--vary sytem_message: names no setting" in err and "system_message" in err


def test_output_folders_are_created_and_write_errors_exit_3(pair: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--html cmp/a.html into a missing folder creates it; a page that cannot be written exits 3 (not 1, the
    regression code) before printing any verdict; a missing run dir exits 3 too."""
    code, _, _ = evalproxy(capsys, "compare", *pair, "--html", tmp_path / "cmp" / "a.html", "--json",
                           tmp_path / "cmp" / "deep" / "a.json")
    assert code == 0 and (tmp_path / "cmp" / "a.html").is_file() and (tmp_path / "cmp" / "deep" / "a.json").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = evalproxy(capsys, "compare", *pair, "--fail-on", "regression", "--html", blocker / "a.html")
    assert code == 3 and out == "" and "cannot write" in err
    code, out, err = evalproxy(capsys, "compare", pair[0], tmp_path / "nope")
    assert code == 3 and "no run directory" in err
