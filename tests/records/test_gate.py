"""evalproxy gate and compare --max-drop: NeMo Evaluator 0.4's gate tests (tests/test_gate.py, test_gate_cli.py,
test_gate_policy.py at the mirror's HEAD) replayed in evalproxy's terms, on run directories made by the records
package's own writers. Cases not replayed, and why, are listed at the end of this module's docstring.

A nel "bundle" with ``results.jsonl`` is here a run directory with ``results.yaml`` and ``samples.jsonl``; nel's
``mean_reward`` names a task's only score; a bundle's ``ci_lower/ci_upper`` are here the harness's stderr.

Not replayed: TestGateMarkdownReport (evalproxy writes no markdown damage report: text and JSON only);
TestClusteredCIIntegration (samples carry no category to cluster on); TestWriteGateReportRoundTrip's reader (there is
no reader of gate reports: the JSON is checked as written); test_validate_for_gate_rejects_unsupported_metric (any
score of the run can be gated, not only mean_reward/pass@1); test_validate_for_gate_rejects_missing_metric (a task
with a single score is gated on it; only an ambiguous one is refused, see test_ambiguous_score_fails_fast);
TestDiscoverBundles.test_empty_dir (an empty directory is a usage error here, not an empty gate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evalproxy.adapter.core.errors import ConfigError, UsageError
from evalproxy.cli import main
from evalproxy.records import build_record, write_results
from evalproxy.records.gate import GatePolicy, GateReport, TaskGate, TaskPolicy, gate_runs, load_policy
from evalproxy.records.harnesses import SampleScore, write_samples
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import Results, ScoreStats
from evalproxy.records.stats import paired_delta_ci

Task = tuple[list[float] | None, float | None]  # per-sample values (None: no samples.jsonl) and the value if none


def run_dir(path: Path, tasks: dict[str, Any], *, stderr: float | None = None,
            extra: dict[str, dict[str, float]] | None = None) -> Path:
    """A run whose tasks each have one score ``acc`` (mean of the per-sample values, or a given value) and, in
    ``extra``, more scores by name."""
    results = Results()
    samples = []
    for task, spec in tasks.items():
        values, value = (spec, None) if isinstance(spec, list) else (None, spec)
        mean = sum(values) / len(values) if values else value
        add_score(results.tasks, task, "acc", "acc", mean, ScoreStats(stderr=stderr) if stderr is not None else None)
        for name, v in (extra or {}).get(task, {}).items():
            add_score(results.tasks, task, name, name, v, ScoreStats(stderr=stderr) if stderr is not None else None)
        samples += [SampleScore(task, str(i), "acc", v) for i, v in enumerate(values or [])]
    write_results(path, build_record(command="x", output_dir=path, params={}, results=results, model_id="m",
                                     endpoint_type="chat", adapter_config={}))
    if samples:
        write_samples(path, samples)
    return path


def policy(benchmarks: dict[str, Any] | None = None, **defaults: Any) -> GatePolicy:
    raw = {"version": 1, "defaults": {"tier": "critical", "metric": "mean_reward", "max_drop": 0.01, **defaults},
           "benchmarks": benchmarks or {}}
    return _load(raw)


def _load(raw: dict[str, Any]) -> GatePolicy:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "policy.yaml"
        path.write_text(json.dumps(raw))
        return load_policy(path)


def gate(tmp_path: Path, base: dict[str, Any], cand: dict[str, Any], pol: GatePolicy, **kw: Any) -> GateReport:
    return gate_runs(run_dir(tmp_path / "base", base, **kw), run_dir(tmp_path / "cand", cand, **kw), pol)


def same(n: int, v: float) -> list[float]:
    return [v] * n


class TestVerdicts:
    def test_all_pass(self, tmp_path: Path) -> None:
        """A drop within max_drop on every task is GO."""
        r = gate(tmp_path, {"mmlu": same(50, 0.8)}, {"mmlu": same(50, 0.795)}, policy({"mmlu": {}}))
        assert r.verdict == "GO" and r.tasks[0].status == "PASS" and r.tasks[0].n_paired == 50

    def test_critical_breach(self, tmp_path: Path) -> None:
        """A critical task whose drop's whole interval exceeds max_drop is a BREACH and NO-GO, the breach named."""
        r = gate(tmp_path, {"mmlu": same(50, 1.0)}, {"mmlu": same(50, 0.95)}, policy({"mmlu": {"tier": "critical"}}))
        assert r.verdict == "NO-GO" and r.tasks[0].status == "BREACH"
        assert r.verdict_reasons() == ["BREACH: mmlu [critical]"]

    def test_supporting_breach_is_nogo(self, tmp_path: Path) -> None:
        """A supporting task's breach blocks too."""
        r = gate(tmp_path, {"triviaqa": same(50, 1.0)}, {"triviaqa": same(50, 0.9)},
                 policy({"triviaqa": {"tier": "supporting", "max_drop": 0.015}}))
        assert r.verdict == "NO-GO"

    def test_advisory_breach_is_go(self, tmp_path: Path) -> None:
        """An advisory task's breach never decides the verdict."""
        r = gate(tmp_path, {"ifeval": same(50, 1.0)}, {"ifeval": same(50, 0.5)},
                 _load({"version": 1, "benchmarks": {"ifeval": {"tier": "advisory"}}}))
        assert r.verdict == "GO" and r.tasks[0].status == "BREACH"

    @pytest.mark.parametrize("side", ["candidate", "baseline"])
    def test_missing_required_task(self, tmp_path: Path, side: str) -> None:
        """A task the policy requires that one run lacks is MISSING: NO-GO, the side named."""
        has, lacks = {"mmlu": same(20, 0.8)}, {"other": same(20, 0.8)}
        base, cand = (has, lacks) if side == "candidate" else (lacks, has)
        r = gate(tmp_path, base, cand, policy({"mmlu": {"tier": "critical"}}))
        missing = next(t for t in r.tasks if t.task == "mmlu")
        assert r.verdict == "NO-GO" and missing.status == "MISSING" and f"the {side} has no such task" in \
            missing.reasons[0]

    def test_relative_drop_breach(self, tmp_path: Path) -> None:
        """Below relative_guard_below, a small absolute drop that is a large relative one breaches."""
        r = gate(tmp_path, {"hle": same(50, 0.10)}, {"hle": same(50, 0.095)},
                 policy({"hle": {"max_drop": 0.015, "max_relative_drop": 0.02, "relative_guard_below": 0.20}}))
        assert r.tasks[0].status == "BREACH" and r.tasks[0].reasons == ["relative drop 5.0% exceeds 2.0%"]

    def test_relative_guard_skips_high_baseline(self, tmp_path: Path) -> None:
        """Above relative_guard_below the relative check is skipped."""
        r = gate(tmp_path, {"mmlu": same(50, 0.80)}, {"mmlu": same(50, 0.76)},
                 policy({"mmlu": {"max_drop": 0.05, "max_relative_drop": 0.02, "relative_guard_below": 0.20}}))
        assert r.tasks[0].status == "PASS"

    def test_improvement_does_not_breach(self, tmp_path: Path) -> None:
        """A rise is never a breach."""
        r = gate(tmp_path, {"mmlu": same(50, 0.7)}, {"mmlu": same(50, 0.9)}, policy({"mmlu": {}}))
        assert r.tasks[0].status == "PASS"

    @pytest.mark.parametrize(("cand", "status"), [(5.5, "BREACH"), (4.5, "PASS")])
    def test_lower_is_better(self, tmp_path: Path, cand: float, status: str) -> None:
        """For lower_is_better, a rise is the damage and a fall an improvement."""
        r = gate(tmp_path, {"loss": same(50, 5.0)}, {"loss": same(50, cand)},
                 policy({"loss": {"direction": "lower_is_better", "max_drop": 0.3}}))
        assert r.tasks[0].status == status

    def test_the_named_score_drives_the_gate(self, tmp_path: Path) -> None:
        """With two scores, the one the policy names is gated (pass@1 unchanged while acc drops)."""
        base = run_dir(tmp_path / "base", {"code": same(50, 0.6)}, extra={"code": {"pass@1": 1.0}}, stderr=0.0)
        cand = run_dir(tmp_path / "cand", {"code": same(50, 0.4)}, extra={"code": {"pass@1": 1.0}}, stderr=0.0)
        r = gate_runs(base, cand, policy({"code": {"metric": "pass@1"}}))
        t = r.tasks[0]
        assert (t.metric, t.baseline, t.candidate, t.n_paired, t.status) == ("pass@1", 1.0, 1.0, 0, "PASS")

    def test_per_task_thresholds(self, tmp_path: Path) -> None:
        """Each task's own max_drop is honoured."""
        r = gate(tmp_path, {"mmlu": same(50, 0.8), "gpqa": same(50, 0.5)},
                 {"mmlu": same(50, 0.78), "gpqa": same(50, 0.48)},
                 _load({"version": 1, "defaults": {"metric": "mean_reward"},
                        "benchmarks": {"mmlu": {"tier": "critical", "max_drop": 0.01},
                                       "gpqa": {"tier": "critical", "max_drop": 0.05}}}))
        assert {t.task: t.status for t in r.tasks} == {"mmlu": "BREACH", "gpqa": "PASS"} and r.verdict == "NO-GO"

    def test_no_samples_and_no_stderr_is_insufficient(self, tmp_path: Path) -> None:
        """Without per-sample results or stderr a gated task has no interval: INSUFFICIENT_EVIDENCE, INCONCLUSIVE."""
        r = gate(tmp_path, {"mmlu": 0.7}, {"mmlu": 0.7}, policy({"mmlu": {}}))
        assert r.tasks[0].status == "INSUFFICIENT_EVIDENCE" and r.verdict == "INCONCLUSIVE"

    def test_few_paired_samples_is_insufficient(self, tmp_path: Path) -> None:
        """Fewer than 10 paired samples (and no stderr) is INSUFFICIENT_EVIDENCE, saying how many."""
        r = gate(tmp_path, {"mmlu": same(5, 0.8)}, {"mmlu": same(5, 0.7)}, policy({"mmlu": {}}))
        assert r.tasks[0].status == "INSUFFICIENT_EVIDENCE"
        assert r.tasks[0].reasons[0] == "only 5 paired samples (at least 10 give a paired interval)"

    def test_interval_straddling_max_drop_is_inconclusive(self, tmp_path: Path) -> None:
        """An interval of the drop across max_drop is neither PASS nor BREACH."""
        r = gate(tmp_path, {"mmlu": same(50, 1.0)}, {"mmlu": same(25, 0.98) + same(25, 1.0)},
                 policy({"mmlu": {"max_drop": 0.01}}))
        assert r.tasks[0].status == "INSUFFICIENT_EVIDENCE" and "straddles" in r.tasks[0].reasons[0]

    def test_stderr_interval_can_breach(self, tmp_path: Path) -> None:
        """Without samples, both runs' stderr give the interval (nel's bundle ci fallback)."""
        r = gate(tmp_path, {"mmlu": 0.80}, {"mmlu": 0.78}, policy({"mmlu": {"max_drop": 0.01}}), stderr=0.0)
        assert r.tasks[0].status == "BREACH" and r.tasks[0].evidence == "95% interval from both runs' stderr"

    def test_ambiguous_score_fails_fast(self, tmp_path: Path) -> None:
        """A required task with several scores and no metric named in the policy is a usage error naming them."""
        base = run_dir(tmp_path / "base", {"mmlu": same(20, 0.8)}, extra={"mmlu": {"f1": 0.5}})
        cand = run_dir(tmp_path / "cand", {"mmlu": same(20, 0.8)}, extra={"mmlu": {"f1": 0.5}})
        with pytest.raises(UsageError, match=r"benchmarks.mmlu.metric.*acc.acc, f1.f1"):
            gate_runs(base, cand, _load({"version": 1, "benchmarks": {"mmlu": {}}}))


    def test_a_score_name_of_two_metrics_is_named_in_full(self, tmp_path: Path) -> None:
        """``accuracy`` scored by two metrics (strict flat, flexible falling) never picks one of them silently: a
        usage error names both; ``flexible.accuracy`` gates the falling one."""
        def run(path: Path, flexible: float) -> Path:
            results = Results()
            add_score(results.tasks, "gsm8k", "strict", "accuracy", 0.8, ScoreStats(stderr=0.01))
            add_score(results.tasks, "gsm8k", "flexible", "accuracy", flexible, ScoreStats(stderr=0.01))
            write_results(path, build_record(command="x", output_dir=path, params={}, results=results, model_id="m",
                                             endpoint_type="chat", adapter_config={}))
            return path

        base, cand = run(tmp_path / "base", 0.8), run(tmp_path / "cand", 0.5)
        with pytest.raises(UsageError, match=r"'accuracy' names several scores \(flexible.accuracy, strict.accuracy\)"):
            gate_runs(base, cand, policy({"gsm8k": {"metric": "accuracy"}}))
        r = gate_runs(base, cand, policy({"gsm8k": {"metric": "flexible.accuracy"}}))
        assert (r.tasks[0].baseline, r.tasks[0].candidate, r.tasks[0].status) == (0.8, 0.5, "BREACH")


class TestRuns:
    def test_directory_of_run_directories(self, tmp_path: Path) -> None:
        """BASELINE may be a directory of run dirs (nel's nested layout), each holding some tasks."""
        for side, v in (("base", 0.8), ("cand", 0.8)):
            run_dir(tmp_path / side / "a", {"mmlu": same(20, v)})
            run_dir(tmp_path / side / "b", {"gpqa": same(20, v)})
        r = gate_runs(tmp_path / "base", tmp_path / "cand", policy({"mmlu": {}, "gpqa": {}}))
        assert sorted(t.task for t in r.tasks) == ["gpqa", "mmlu"] and r.verdict == "GO"

    def test_duplicate_task_fails(self, tmp_path: Path) -> None:
        """A task found in two run dirs of one side is an error naming both."""
        run_dir(tmp_path / "base" / "a", {"mmlu": same(20, 0.8)})
        run_dir(tmp_path / "base" / "b", {"mmlu": same(20, 0.8)})
        run_dir(tmp_path / "cand", {"mmlu": same(20, 0.8)})
        with pytest.raises(UsageError, match="task mmlu is in two runs"):
            gate_runs(tmp_path / "base", tmp_path / "cand", policy())


class TestPairedInterval:
    def test_identical_deltas_give_a_point(self) -> None:
        """Identical paired differences give an interval of width zero at the difference."""
        lo, hi = paired_delta_ci([0.0] * 100, [0.1] * 100) or (None, None)
        assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)

    def test_small_samples_give_wide_intervals(self) -> None:
        """Three noisy pairs give a wide interval (Student's t with 2 degrees of freedom)."""
        lo, hi = paired_delta_ci([0.0, 0.0, 0.0], [0.1, -0.1, 0.2]) or (0.0, 0.0)
        assert hi - lo > 0.5

    def test_single_pair_gives_none(self) -> None:
        """One pair has no interval."""
        assert paired_delta_ci([0.0], [0.1]) is None


class TestAggregate:
    @pytest.mark.parametrize(("statuses", "verdict"), [
        ([("critical", "PASS"), ("supporting", "PASS")], "GO"),
        ([("critical", "BREACH"), ("supporting", "PASS")], "NO-GO"),
        ([("critical", "MISSING")], "NO-GO"),
        ([("critical", "INSUFFICIENT_EVIDENCE"), ("supporting", "PASS")], "INCONCLUSIVE"),
        ([("advisory", "BREACH"), ("critical", "PASS")], "GO"),
        ([("critical", "INSUFFICIENT_EVIDENCE"), ("supporting", "BREACH")], "NO-GO"),
    ])
    def test_verdict(self, statuses: list[tuple[str, Any]], verdict: str) -> None:
        """Breach or missing blocks, then insufficient evidence is inconclusive; advisory tasks never count."""
        r = GateReport("a", "b", "p", [TaskGate(f"t{i}", tier, status) for i, (tier, status) in enumerate(statuses)])
        assert r.verdict == verdict


class TestPolicy:
    def test_minimal_and_full(self) -> None:
        """A bare version gives the defaults (supporting, max_drop 0.015); a full file is read field by field."""
        assert _load({"version": 1}).resolve("x") == TaskPolicy()
        full = _load({"version": 1, "defaults": {"tier": "critical", "max_drop": 0.02, "metric": "acc"},
                      "benchmarks": {"aime": {"max_drop": 0.01, "max_relative_drop": 0.02,
                                              "relative_guard_below": 0.2, "direction": "lower_is_better"},
                                     "ifeval": {"tier": "advisory"}, "gsm8k": None}})
        assert full.resolve("aime") == TaskPolicy("critical", 0.01, 0.02, 0.2, "acc", "lower_is_better")
        assert full.resolve("gsm8k") == full.resolve("unknown") == TaskPolicy("critical", 0.02, metric="acc")
        assert full.required() == ["aime", "gsm8k"]

    @pytest.mark.parametrize(("raw", "field"), [
        ({"version": 2}, "version"),
        ({"version": 1, "defaults": {"max_drop": -0.1}}, "defaults.max_drop"),
        ({"version": 1, "benchmarks": {"x": {"max_relative_drop": -1}}}, "benchmarks.x.max_relative_drop"),
        ({"version": 1, "defaults": {"relative_guard_below": 1.5}}, "defaults.relative_guard_below"),
        ({"version": 1, "extra": 1}, "extra"),
        ({"version": 1, "benchmarks": {"x": {"bogus": 1}}}, "benchmarks.x.bogus"),
        ({"version": 1, "defaults": {"tier": "blocking"}}, "defaults.tier"),
        ({"version": 1, "defaults": {"direction": "up"}}, "defaults.direction"),
    ])
    def test_bad_policy_names_the_field(self, raw: dict[str, Any], field: str) -> None:
        """A bad version, a negative drop, a guard outside [0, 1], an unknown field, tier or direction is a config
        error naming the field."""
        with pytest.raises(ConfigError) as info:
            _load(raw)
        assert info.value.field == field

    def test_missing_and_malformed_files(self, tmp_path: Path) -> None:
        """A policy file that does not exist is a usage error; one that is not a mapping a config error."""
        with pytest.raises(UsageError, match="cannot read the gate policy"):
            load_policy(tmp_path / "absent.yaml")
        (tmp_path / "list.yaml").write_text("- a\n- b\n")
        with pytest.raises(ConfigError, match="a gate policy is a mapping"):
            load_policy(tmp_path / "list.yaml")


POLICY = "version: 1\ndefaults:\n  tier: critical\n  metric: mean_reward\n  max_drop: 0.015\nbenchmarks:\n" \
         "  mmlu:\n    tier: critical\n    max_drop: {max_drop}\n"


class TestCommand:
    def _dirs(self, tmp_path: Path, base: float, cand: float, n: int = 20, max_drop: float = 0.01) -> list[str]:
        (tmp_path / "policy.yaml").write_text(POLICY.format(max_drop=max_drop))
        return [str(run_dir(tmp_path / "b", {"mmlu": same(n, base)})),
                str(run_dir(tmp_path / "c", {"mmlu": same(n, cand)})), "--policy", str(tmp_path / "policy.yaml")]

    def test_text_json_and_output_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """GO exits 0 in text (verdict first, the task's line), JSON on stdout, and a JSON report in a new folder."""
        args = self._dirs(tmp_path, 0.80, 0.795)
        assert main(["gate", *args, "--output", str(tmp_path / "out" / "gate.json")]) == 0
        out = capsys.readouterr().out
        assert out.startswith("GO: all 1 gated task(s) passed\n") and "  mmlu " in out and " PASS " in out
        assert json.loads((tmp_path / "out" / "gate.json").read_text())["verdict"] == "GO"
        assert main(["gate", *args, "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["verdict"] == "GO" and doc["report_version"] == 1 and doc["missing"] == []
        row = doc["benchmarks"][0]  # nel gate's field names, so a pipeline reading nel's report reads this one
        assert row["benchmark"] == "mmlu" and row["status"] == "PASS" and row["n_paired"] == 20
        assert row["baseline_score"] == pytest.approx(0.80) and row["candidate_score"] == pytest.approx(0.795)
        assert row["delta_ci_lower"] <= row["delta"] + 1e-9 <= row["delta_ci_upper"] + 2e-9
        assert row["max_drop_threshold"] == 0.01  # the policy's, not the default

    def test_nogo_exits_1_naming_the_breach(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """NO-GO exits 1 and the first line names the breached task; --no-strict exits 0."""
        args = self._dirs(tmp_path, 0.80, 0.70)
        assert main(["gate", *args]) == 1
        out = capsys.readouterr().out
        assert out.startswith("NO-GO: BREACH: mmlu [critical]\n") and "wholly beyond max_drop 0.0100" in out
        assert main(["gate", *args, "--no-strict"]) == 0

    def test_inconclusive_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Too few paired samples is INCONCLUSIVE, exit 2."""
        assert main(["gate", *self._dirs(tmp_path, 0.80, 0.79, n=5)]) == 2
        assert capsys.readouterr().out.startswith("INCONCLUSIVE: INSUFFICIENT_EVIDENCE: mmlu [critical]")

    def test_usage_errors_exit_3(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing run dir or policy file exits 3 with a one-line reason."""
        args = self._dirs(tmp_path, 0.8, 0.8)
        assert main(["gate", args[0], str(tmp_path / "nope"), "--policy", args[3]]) == 3
        assert main(["gate", args[0], args[1], "--policy", str(tmp_path / "nope.yaml")]) == 3
        err = capsys.readouterr().err
        assert "no run directory" in err and "cannot read the gate policy" in err


class TestCompareMaxDrop:
    def test_breach_beyond_noise_exits_1(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """compare --max-drop 0.05 on a drop of 0.3 beyond noise exits 1 and names the breach; --max-drop 0.5 does
        not breach (exit 0, verdict still regression)."""
        a = run_dir(tmp_path / "a", {"sums": same(20, 1.0)})
        b = run_dir(tmp_path / "b", {"sums": same(14, 1.0) + same(6, 0.0)})
        assert main(["compare", str(a), str(b), "--max-drop", "0.05"]) == 1
        out = capsys.readouterr().out
        assert out.startswith("REGRESSION: sums acc 1 -> 0.7") and "BREACH: dropped 0.3 > --max-drop 0.05" in out
        assert "exit status 1: regression (a --max-drop breach)" in out
        assert main(["compare", str(a), str(b), "--max-drop", "0.5"]) == 0

    def test_strict_counts_a_drop_within_noise(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A drop of 0.1 on 20 samples is within noise: no breach, unless --strict."""
        a = run_dir(tmp_path / "a", {"sums": same(20, 1.0)})
        b = run_dir(tmp_path / "b", {"sums": same(18, 1.0) + same(2, 0.0)})
        assert main(["compare", str(a), str(b), "--max-drop", "0.05"]) == 0
        assert capsys.readouterr().out.startswith("NO SIGNIFICANT CHANGE")
        assert main(["compare", str(a), str(b), "--max-drop", "0.05", "--strict"]) == 1
        assert "(within noise, p=0.5; --strict counts it)" in capsys.readouterr().out
