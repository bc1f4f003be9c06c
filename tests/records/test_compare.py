"""compare_runs on run directories built with the records package's own writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evalproxy.adapter.core.intervals import score_interval, wilson
from evalproxy.records import RequestLedger, build_record, compare_runs, write_results
from evalproxy.records.harnesses import SampleScore, write_samples
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import Results, ScoreStats
from evalproxy.records.stats import mcnemar, paired_bootstrap, stderr_z
from tests.browser import CHROMIUM, MISSING, dump_dom

SYSTEM = "You are terse.\nAnswer <b>only</b> the number."


def _adapter(run_dir: Path, system: str = SYSTEM) -> dict[str, Any]:
    return {"endpoint_type": "chat", "interceptors": [
        {"name": "system_message", "config": {"system_message": system}},
        {"name": "caching", "config": {"cache_dir": str(run_dir / "cache"), "reuse_cached_responses": True}},
        {"name": "endpoint"}]}


def make_run(run_dir: Path, *, values: list[float], system: str = SYSTEM, temperature: float = 0.0,
             prompts: range = range(20), stderr: float | None = None, samples: bool = True,
             answers: dict[int, str] | None = None) -> Path:
    """A run dir with results.yaml, samples.jsonl and requests.jsonl for ``len(values)`` questions."""
    results = Results()
    mean = sum(values) / len(values)
    add_score(results.tasks, "quiz", "acc", "acc", mean, ScoreStats(count=len(values), stderr=stderr))
    write_results(run_dir, build_record(command="quiz", output_dir=run_dir, params={"temperature": temperature},
                                        results=results, model_id="m", endpoint_type="chat",
                                        adapter_config=_adapter(run_dir, system)))
    if samples:
        write_samples(run_dir, [SampleScore("quiz", str(i), "acc", v, answer=(answers or {}).get(i, str(v)))
                                for i, v in enumerate(values)])
    ledger = RequestLedger(run_dir, interval=0.01)
    for i in prompts:
        ledger.record({"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "temperature": temperature},
                      status=200, latency_ms=10.0 + i, completion_tokens=5, finish_reason="stop")
    ledger.close()
    return run_dir


class TestComparable:
    def test_identical_setups_are_comparable(self, tmp_path: Path) -> None:
        """Same chain, params, prompts and tasks: comparable, exit 0, cache_dir differences shown but not counted."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20)
        c = compare_runs(a, b)
        assert c.comparable and c.exit_code == 0
        cache_dir = next(x for x in c.checks if x.name == "caching.cache_dir")
        assert not cache_dir.same and not cache_dir.counts

    def test_system_prompt_difference_is_shown_verbatim(self, tmp_path: Path) -> None:
        """A changed system prompt makes runs incomparable and both prompts appear verbatim."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20, system="Think step by step.")
        c = compare_runs(a, b)
        check = next(x for x in c.checks if x.name == "system_message.system_message")
        assert not check.same and check.baseline == SYSTEM and check.candidate == "Think step by step."
        assert c.exit_code == 2

    def test_without_ledgers_the_params_as_sent_are_compared(self, tmp_path: Path) -> None:
        """With no request in common, a temperature sent differently (the record's observed_params, wire names)
        makes the runs incomparable, though config.params (NeMo's names, from the harness) agree."""
        runs = []
        for name, sent in (("a", 0.0), ("b", 0.7)):
            run_dir = tmp_path / name
            results = Results()
            add_score(results.tasks, "quiz", "acc", "acc", 1.0, ScoreStats(count=20))
            write_results(run_dir, build_record(command="quiz", output_dir=run_dir, params={"max_new_tokens": 16},
                                                results=results, model_id="m", endpoint_type="chat",
                                                adapter_config=_adapter(run_dir),
                                                facts={"observed_params": {"temperature": sent}}))
            runs.append(run_dir)
        c = compare_runs(*runs)
        check = next(x for x in c.checks if x.name == "generation param temperature")
        assert not check.same and (check.baseline, check.candidate) == ("0.0", "0.7") and c.exit_code == 2

    def test_prompts_in_one_run_only_are_counted(self, tmp_path: Path) -> None:
        """Requests asked in one run only are counted per side."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20, prompts=range(5, 25))
        check = next(x for x in compare_runs(a, b).checks if x.name == "prompts")
        assert not check.same and check.detail == "5 requests only in baseline, 5 only in candidate"


class TestScores:
    def test_mcnemar_on_binary_samples_flags_a_regression(self, tmp_path: Path) -> None:
        """A drop from 20/20 to 8/20 on paired 0/1 samples is significant and fails with fail_on=regression."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 8 + [0.0] * 12)
        c = compare_runs(a, b, fail_on="regression")
        row = c.scores[0]
        assert row.method == "mcnemar-exact" and row.significant and row.delta == pytest.approx(-0.6)
        assert c.comparable and c.exit_code == 1
        assert compare_runs(a, b).exit_code == 0

    def test_bootstrap_on_continuous_samples(self, tmp_path: Path) -> None:
        """Non-binary per-sample scores use the seeded paired bootstrap, giving the same p on every run."""
        a = make_run(tmp_path / "a", values=[0.5 + i / 100 for i in range(20)])
        b = make_run(tmp_path / "b", values=[0.4 + i / 100 for i in range(20)])
        r1, r2 = compare_runs(a, b).scores[0], compare_runs(a, b).scores[0]
        assert r1.method == "paired-bootstrap" and r1.significant and r1.p_value == r2.p_value

    def test_stderr_fallback_without_samples(self, tmp_path: Path) -> None:
        """Without per-sample results the harness stderr gives a z test."""
        a = make_run(tmp_path / "a", values=[1.0] * 20, stderr=0.01, samples=False)
        b = make_run(tmp_path / "b", values=[1.0] * 19 + [0.0], stderr=0.01, samples=False)
        row = compare_runs(a, b).scores[0]
        assert row.method == "stderr-z" and row.significant

    def test_mcnemar_exact_and_chi2(self) -> None:
        """Few discordant pairs use the exact binomial, many use chi-square; both match hand-computed values."""
        exact = mcnemar([1, 1, 1, 0], [0, 0, 0, 0])
        assert exact.method == "mcnemar-exact" and exact.p_value == pytest.approx(0.25)
        many = mcnemar([1.0] * 40 + [0.0] * 10, [0.0] * 40 + [1.0] * 10)
        assert many.method == "mcnemar-chi2" and many.p_value == pytest.approx(4.11e-5, rel=0.01)

    def test_bootstrap_and_z_edge_cases(self) -> None:
        """Identical samples give p = 1; a missing stderr gives no test rather than a guess."""
        assert paired_bootstrap([0.3, 0.4], [0.3, 0.4]).p_value == 1.0
        assert stderr_z(0.1, None, 0.02).p_value is None


    def test_a_share_of_right_answers_gets_the_reports_interval(self, tmp_path: Path) -> None:
        """Without samples, a score whose stderr is a 0/1 sample's gets the interval the run's report shows for it
        (Wilson's, inside [0, 1]), not value +- 1.96 stderr, which runs past 1 here."""
        se = (0.9 * 0.1 / 19) ** 0.5
        a = make_run(tmp_path / "a", values=[1.0] * 18 + [0.0] * 2, stderr=se, samples=False)
        b = make_run(tmp_path / "b", values=[1.0] * 18 + [0.0] * 2, stderr=se, samples=False)
        row = compare_runs(a, b).scores[0]
        assert row.baseline_ci == score_interval(0.9, se, 20) == wilson(18, 20)
        assert row.baseline_ci is not None and row.baseline_ci[1] < 1.0 < 0.9 + 1.96 * se


class TestOutput:
    def test_changed_answers_through_the_callable(self, tmp_path: Path) -> None:
        """Without harness answers, answers come from the given callable, keyed by each run's prompt key; the first N
        are shown."""
        a = make_run(tmp_path / "a", values=[1.0] * 20, samples=False)
        b = make_run(tmp_path / "b", values=[1.0] * 20, samples=False)
        from evalproxy.records import read_ledger

        keys = {e.prompt_key: i for i, e in enumerate(read_ledger(a))}

        def answers(run_dir: Path, key: str) -> str | None:
            i = keys[key]
            return f"<script>alert({i})</script>" if run_dir == b and i < 4 else "same"

        c = compare_runs(a, b, answers=answers, max_changed=2)
        assert c.changed_total == 4 and len(c.changed) == 2 and c.pairs_compared == 20
        page = c.to_html()
        assert "&lt;script&gt;alert(0)&lt;/script&gt;" in page and "<script" not in page
        assert "&lt;b&gt;only&lt;/b&gt;" in page

    def test_json_form(self, tmp_path: Path) -> None:
        """to_dict carries the verdict, the differences by name and the exit code."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20, temperature=0.7)
        d = compare_runs(a, b).to_dict()
        assert d["comparable"] is False and d["exit_code"] == 2
        assert "generation param temperature" in d["differences"]

    def test_explains_prompts_found_in_one_run(self, tmp_path: Path) -> None:
        """With stored request bodies, a prompt found only in the candidate is explained against the baseline."""
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20)
        bodies = {a: [{"messages": [{"role": "user", "content": "q1"}], "max_tokens": 8}],
                  b: [{"messages": [{"role": "user", "content": "q1"}], "max_tokens": 8, "seed": 3}]}
        c = compare_runs(a, b, request_bodies=lambda d: bodies[d])
        assert c.explained[0]["differences"] == ["new seed 3"]

    def test_not_a_run_dir(self, tmp_path: Path) -> None:
        """A path that is not a directory is a ConfigError naming it."""
        from evalproxy.adapter.core.errors import ConfigError

        with pytest.raises(ConfigError, match="not a run directory"):
            compare_runs(tmp_path / "nope", tmp_path)




@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
class TestInBrowser:
    def test_page_renders_and_model_script_never_runs(self, tmp_path: Path) -> None:
        """Headless Chromium shows the three sections; a <script> in a model answer stays text and never runs."""
        assert CHROMIUM is not None
        a = make_run(tmp_path / "a", values=[1.0] * 20)
        b = make_run(tmp_path / "b", values=[1.0] * 20,
                     answers={0: "<script>document.title='pwned'</script>"})
        page = tmp_path / "compare.html"
        page.write_text(compare_runs(a, b).to_html())
        dom = dump_dom(page, tmp_path / "chromium")
        assert "<title>evalproxy compare</title>" in dom
        for section in ('id="comparable"', 'id="scores"', 'id="changed"'):
            assert section in dom
        assert "&lt;script&gt;document.title=" in dom
