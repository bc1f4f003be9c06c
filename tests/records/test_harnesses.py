"""Harness parsers on real output files the harnesses wrote (see fixtures/README.md for the commands)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from evalproxy.adapter.core import loads
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.harnesses import base as harness_base
from evalproxy.records.harnesses import detect_harness, read_harness_output, read_samples, write_samples
from evalproxy.records.harnesses.base import load_json_lines

from .conftest import copy_fixture


class TestDetection:
    @pytest.mark.parametrize(
        ("argv", "name"),
        [
            (["lm_eval", "--tasks", "x"], "lm-evaluation-harness"),
            (["python", "-m", "lm_eval", "--tasks", "x"], "lm-evaluation-harness"),
            (["/venv/bin/inspect", "eval", "task.py"], "inspect-ai"),
            (["sh", "-c", "simple_evals --eval_name gpqa"], "simple_evals"),
            (["nemo-evaluator", "run_eval", "--output_dir", "o"], "nemo-evaluator"),
            (["mytool", "--go"], None),
        ],
    )
    def test_harness_is_detected_from_the_command(self, argv: list[str], name: str | None) -> None:
        """The harness is recognised by program name, ``-m`` module or inside a shell string; else None."""
        parser = detect_harness(argv)
        assert (parser.name if parser else None) == name


class TestLmEval:
    def test_scores_and_samples_from_output_path(self, workdir: Path) -> None:
        """Scores, stderr and per-sample 0/1 results come from --output_path as lm-eval wrote them."""
        copy_fixture("lm_eval", workdir)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
        assert r.status == "success" and r.version == "0.4.13"
        score = r.results.tasks["sums"].metrics["exact_match"].scores["exact_match"]
        assert score.value == 0.8 and score.stats is not None
        assert score.stats.stderr == pytest.approx(0.1333, abs=1e-3) and score.stats.count == 10
        assert len(r.samples) == 10 and sum(s.value for s in r.samples) == 8
        assert {s.answer for s in r.samples if s.value == 0} == {"8", "12"}

    def test_groups_are_groups(self, workdir: Path) -> None:
        """A group's aggregate goes under groups, its subtasks under tasks."""
        copy_fixture("lm_eval_group", workdir)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval_group"], workdir=workdir)
        assert set(r.results.groups) == {"arith"}
        assert set(r.results.tasks) == {"sums", "sums_big"}
        assert r.results.flat()["arith_exact_match_exact_match"] == 0.8

    def test_failed_run_wrote_nothing(self, workdir: Path, fixtures: Path) -> None:
        """lm-eval that died on upstream 500s leaves no results: status empty with the places looked at."""
        copy_fixture("lm_eval_failed", workdir)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval_failed"], workdir=workdir,
                                started_at=time.time() - 60)
        assert r.status == "empty" and r.results.is_empty()
        assert r.reason is not None and "--output_path" not in r.reason and "wrote no result files" in r.reason

    def test_stale_results_are_not_this_runs(self, workdir: Path) -> None:
        """Result files older than the run's start are ignored."""
        copy_fixture("lm_eval", workdir)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir, started_at=time.time())
        assert r.status == "empty"


class TestInspect:
    @pytest.mark.parametrize("kind", ["inspect_json", "inspect_eval"])
    def test_scores_and_samples_from_log_dir(self, workdir: Path, kind: str) -> None:
        """Both log formats give accuracy with stderr and the per-sample C/I grades as 1/0."""
        copy_fixture(kind, workdir)
        r = read_harness_output(["inspect", "eval", "sums_task.py", "--log-dir", kind], workdir=workdir)
        assert r.status == "success" and r.version == "0.3.285"
        score = r.results.tasks["sums"].metrics["match"].scores["accuracy"]
        assert score.value == 0.8 and score.stats is not None and score.stats.stderr == pytest.approx(0.1333, 1e-3)
        assert "stderr" not in r.results.tasks["sums"].metrics["match"].scores
        assert sorted(s.sample_id for s in r.samples if s.value == 0) == ["q2", "q4"]

    def test_failed_run_gives_error_and_reason(self, workdir: Path) -> None:
        """A log with status error reports it, with the harness's own message, and no scores."""
        copy_fixture("inspect_failed", workdir)
        r = read_harness_output(["inspect", "eval", "t.py", "--log-dir", "inspect_failed"], workdir=workdir)
        assert r.status == "error" and r.results.is_empty()
        assert r.reason is not None and "InternalServerError" in r.reason

    def test_default_log_dir_and_workdir_scan(self, workdir: Path) -> None:
        """Without --log-dir the default ./logs is searched, and a log elsewhere in the workdir is still found."""
        copy_fixture("inspect_json", workdir)
        os.rename(workdir / "inspect_json", workdir / "elsewhere")
        r = read_harness_output(["inspect", "eval", "t.py"], workdir=workdir, started_at=0)
        assert r.status == "success"


class TestOthers:
    def test_simple_evals(self, workdir: Path) -> None:
        """simple-evals' metrics file gives score micro with std and stderr, in tasks and groups as NeMo does."""
        copy_fixture("simple_evals", workdir)
        r = read_harness_output(["simple_evals", "--eval_name", "sums", "--out_dir", "simple_evals"],
                                workdir=workdir)
        s = r.results.tasks["sums"].metrics["score"].scores["micro"]
        assert s.value == 0.8 and s.stats is not None and s.stats.stddev == 0.4
        assert r.results.groups["sums"].metrics["score"].scores["micro"].value == 0.8

    def test_nemo_evaluator(self, workdir: Path) -> None:
        """nemo-evaluator's results.yml is taken as it is."""
        copy_fixture("nemo_evaluator", workdir)
        r = read_harness_output(["nemo-evaluator", "run_eval", "--output_dir", "nemo_evaluator"], workdir=workdir)
        assert r.status == "success" and r.results.flat() == {"sums_score_micro": 0.8}

    def test_unknown_harness_records_no_scores_and_says_why(self, workdir: Path) -> None:
        """A command evalproxy does not know gives status unknown and a reason; it does not guess."""
        copy_fixture("lm_eval", workdir)
        r = read_harness_output(["./my_eval.sh"], workdir=workdir, started_at=0)
        assert r.status == "unknown" and r.results.is_empty()
        assert r.reason is not None and "my_eval.sh" in r.reason

    def test_unknown_harness_with_explicit_results(self, workdir: Path) -> None:
        """With an explicit --results path, a file of a known format is read even for an unknown command."""
        copy_fixture("lm_eval", workdir)
        r = read_harness_output(["./my_eval.sh"], workdir=workdir, explicit="lm_eval")
        assert r.harness == "lm-evaluation-harness" and r.results.flat() == {"sums_exact_match_exact_match": 0.8}

    def test_explicit_path_is_the_last_resort(self, workdir: Path, tmp_path: Path) -> None:
        """A known harness that left nothing in its output dir or the workdir is read from --results."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        copy_fixture("lm_eval", elsewhere)
        r = read_harness_output(["lm_eval", "--output_path", "out"], workdir=workdir, started_at=time.time(),
                                explicit=elsewhere / "lm_eval")
        assert r.status == "success"

    def test_empty_run_directory(self, workdir: Path) -> None:
        """A harness run that produced no files at all is an empty record with a reason."""
        r = read_harness_output(["inspect", "eval", "t.py"], workdir=workdir, started_at=time.time())
        assert r.status == "empty" and r.reason is not None

    def test_samples_round_trip(self, workdir: Path, tmp_path: Path) -> None:
        """Per-sample results written to samples.jsonl read back equal."""
        copy_fixture("lm_eval", workdir)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
        write_samples(tmp_path, r.samples)
        assert list(read_samples(tmp_path)) == r.samples


class TestUnknownCommand:
    RESULTS = ("tasks:\n  arithmetic:\n    metrics:\n      accuracy:\n        scores:\n"
               "          accuracy: {value: 0.5}\n")

    def test_a_nemo_format_results_file_written_during_the_run_is_read(self, tmp_path: Path) -> None:
        """A command evalproxy does not know that writes NeMo's results.yml (bare tasks at the top, as the jobs
        service's harnesses do) during the run gets its scores recorded, under the program's name."""
        started = time.time() - 1
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "results.yml").write_text(self.RESULTS)
        r = read_harness_output(["./my_eval.sh", "--n", "4"], workdir=tmp_path, started_at=started)
        assert r.status == "success" and r.harness == "my_eval.sh"
        assert r.results.tasks["arithmetic"].metrics["accuracy"].scores["accuracy"].value == 0.5

    def test_old_files_and_evalproxy_records_are_not_read(self, tmp_path: Path) -> None:
        """A results file older than the run, or evalproxy's own run record, never stands for the run's scores."""
        old = tmp_path / "old" / "results.yml"
        old.parent.mkdir()
        old.write_text(self.RESULTS)
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        (tmp_path / "results.yaml").write_text("evalproxy: {version: x}\nresults:\n  " +
                                               self.RESULTS.replace("\n", "\n  ").rstrip() + "\n")
        r = read_harness_output(["./my_eval.sh"], workdir=tmp_path, started_at=time.time() - 60)
        assert r.status == "unknown" and "unknown harness 'my_eval.sh'" in (r.reason or "")
        assert read_harness_output(["./my_eval.sh"], workdir=tmp_path).status == "unknown"  # no start time: no scan


    def test_a_results_file_whose_results_is_a_list_is_passed_over(self, tmp_path: Path) -> None:
        """A results.yml written during the run whose ``results`` is a list (no NeMo shape) is not taken for the
        run's scores and stops nothing: the harness is reported unknown, as with no file."""
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "results.yml").write_text("results: [1, 2]\n")
        r = read_harness_output(["./my_eval.sh"], workdir=tmp_path, started_at=time.time() - 60)
        assert r.status == "unknown" and r.results.is_empty()


class TestDamagedHarnessFiles:
    def test_torn_and_too_deep_sample_lines_are_skipped(self, workdir: Path) -> None:
        """A torn line and a line nested 1000 deep in lm-eval's samples file are skipped: the scores and the other
        samples are still read (they ended the run record before)."""
        copy_fixture("lm_eval", workdir)
        samples = next((workdir / "lm_eval").rglob("samples_*.jsonl"))
        with samples.open("ab") as f:
            f.write(b'{"doc_id": 99, "target": ' + b"[" * 1000 + b"]" * 1000 + b"}\n" + b'{"doc_id": 100, "tar\n')
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
        assert r.status == "success" and len(r.samples) == 10


class TestSizeBounds:
    """A run dir's files are read whole only up to a bound (lowered here so that the files stay small)."""

    def test_a_results_file_past_the_bound_is_an_error_naming_it(self, workdir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """lm-eval's results file larger than the bound is reported unreadable, saying so, and is never parsed."""
        copy_fixture("lm_eval", workdir)
        monkeypatch.setattr(loads, "MAX_FILE_BYTES", 512)
        r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
        assert r.status == "error" and r.reason is not None
        assert "unreadable results file" in r.reason and "larger than" in r.reason and "results_" in r.reason

    def test_an_eval_log_member_past_the_bound_is_never_expanded(self, workdir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """An inspect .eval whose header member says it expands past the bound is refused before it is read."""
        copy_fixture("inspect_eval", workdir)
        monkeypatch.setattr(loads, "MAX_FILE_BYTES", 256)
        r = read_harness_output(["inspect", "eval", "t.py", "--log-dir", "inspect_eval"], workdir=workdir)
        assert r.status != "success" and r.results.is_empty()
        assert r.reason is not None and "header.json is larger than" in r.reason

    def test_a_samples_line_past_the_bound_is_skipped_and_the_next_read(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        """A .jsonl line longer than the bound is passed over with a warning (never held whole); the lines after
        it are read."""
        monkeypatch.setattr(harness_base, "MAX_LINE_BYTES", 64)
        path = tmp_path / "samples.jsonl"
        path.write_bytes(b'{"n": 1}\n{"n": 2, "long": "' + b"x" * 1000 + b'"}\n{"n": 3}\n' + b'{"n": 4, "t": "'
                         + b"y" * 200 + b'"}')
        assert [d["n"] for d in load_json_lines(path)] == [1, 3]
        assert [r.getMessage().split(" line ")[1] for r in caplog.records] == [
            "2 skipped: longer than 0 MiB", "4 skipped: longer than 0 MiB"]

    def test_a_yaml_file_past_its_bound_is_a_config_error_naming_it(self, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """read_yaml refuses a file past MAX_YAML_BYTES with a ConfigError naming it, before parsing it."""
        monkeypatch.setattr(loads, "MAX_YAML_BYTES", 100)
        path = tmp_path / "results.yaml"
        path.write_text("results:\n" + "".join(f"  k{i}: {i}\n" for i in range(50)))
        with pytest.raises(ConfigError, match="larger than") as info:
            loads.read_yaml(path)
        assert "results.yaml" in str(info.value)
        monkeypatch.setattr(loads, "MAX_YAML_BYTES", 10_000)
        assert loads.read_yaml(path)["results"]["k49"] == 49
