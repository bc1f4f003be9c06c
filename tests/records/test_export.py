"""processed_results.json and CSV from run directories."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from evalproxy.cli import main
from evalproxy.cli.common import EXIT_CONFIG
from evalproxy.records.export import build_processed_results, export_runs
from evalproxy.records.harnesses import read_harness_output
from evalproxy.records.results import build_record, write_results

from .conftest import copy_fixture

ENTRY_KEYS = ["invocation_id", "job_id", "harness", "container", "scores", "timestamp", "executor"]


def _run(tmp_path: Path, name: str, fixture: str, argv: list[str], model: str) -> Path:
    work = tmp_path / f"work-{name}"
    work.mkdir()
    copy_fixture(fixture, work)
    h = read_harness_output(argv, workdir=work)
    run_dir = tmp_path / name
    write_results(run_dir, build_record(command=argv, output_dir=run_dir, params={}, results=h.results,
                                        model_id=model, run_id=f"id-{name}", harness=h.info(),
                                        finished_at="2026-01-02T03:04:05"))
    return run_dir


class TestProcessedResults:
    def test_two_runs_gather_into_nemo_shape(self, tmp_path: Path) -> None:
        """Two runs become one document: benchmarks -> name -> models -> model id -> entries with NeMo's keys."""
        a = _run(tmp_path, "a", "lm_eval", ["lm_eval", "--output_path", "lm_eval"], "org/model-a")
        b = _run(tmp_path, "b", "lm_eval", ["lm_eval", "--output_path", "lm_eval"], "org/model-b")
        doc = build_processed_results([a, b], now=datetime(2026, 1, 2, 3, 4, 5))
        assert list(doc) == ["export_timestamp", "benchmarks"]
        assert doc["export_timestamp"] == "2026-01-02T03:04:05"
        models = doc["benchmarks"]["sums"]["models"]
        assert set(models) == {"org/model-a", "org/model-b"}
        entry = models["org/model-a"][0]
        assert list(entry) == ENTRY_KEYS
        assert entry["scores"] == {"sums_exact_match_exact_match": 0.8}
        assert entry["invocation_id"] == "id-a" and entry["job_id"] == "id-a.0"
        assert entry["harness"] == "lm-evaluation-harness" and entry["executor"] == "local"

    def test_groups_and_tasks_are_benchmarks(self, tmp_path: Path) -> None:
        """Each task and group of an lm-eval run is its own benchmark with its own job id."""
        a = _run(tmp_path, "a", "lm_eval_group", ["lm_eval", "--output_path", "lm_eval_group"], "m")
        doc = build_processed_results([a])
        assert set(doc["benchmarks"]) == {"arith", "sums", "sums_big"}
        job_ids = {e["job_id"] for b in doc["benchmarks"].values() for e in b["models"]["m"]}
        assert len(job_ids) == 3

    def test_nemo_record_uses_its_type(self, tmp_path: Path, fixtures: Path) -> None:
        """A nemo-evaluator results.yml is one benchmark named by config.type, scores deduplicated."""
        run = tmp_path / "nemo"
        copy_fixture("nemo_evaluator", tmp_path)
        (tmp_path / "nemo_evaluator").rename(run)
        doc = build_processed_results([run])
        assert doc["benchmarks"]["sums"]["models"]["fake-model"][0]["scores"] == {"sums_score_micro": 0.8}

    def test_files_json_and_csv(self, tmp_path: Path) -> None:
        """export_runs writes processed_results.json, or a CSV with one row per score."""
        a = _run(tmp_path, "a", "simple_evals", ["simple_evals", "--out_dir", "simple_evals", "--eval_name", "sums"],
                 "m")
        out = export_runs([a], tmp_path / "out")
        assert out.name == "processed_results.json"
        assert json.loads(out.read_text())["benchmarks"]["sums"]["models"]["m"][0]["scores"]["sums_score_micro"] == 0.8
        rows = list(csv.DictReader(io.StringIO(export_runs([a], tmp_path / "out", fmt="csv").read_text())))
        assert {r["score_name"]: float(r["value"]) for r in rows} == {"sums_chars_micro": 1.0, "sums_score_micro": 0.8}
        assert rows[0]["model"] == "m" and rows[0]["invocation_id"] == "id-a"


class TestLauncherWords:
    def test_dest_local_and_output_dir_underscore(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`export --dest local --output_dir DIR` (the launcher's words) writes what `--dest file -o DIR` writes."""
        a = _run(tmp_path, "a", "lm_eval", ["lm_eval", "--output_path", "lm_eval"], "m")
        assert main(["export", str(a), "--dest", "local", "--output_dir", str(tmp_path / "l"), "--format", "csv"]) == 0
        assert main(["export", str(a), "--dest", "file", "-o", str(tmp_path / "f"), "--format", "csv"]) == 0
        assert (tmp_path / "l" / "processed_results.csv").read_text() == (
            tmp_path / "f" / "processed_results.csv").read_text()
        assert capsys.readouterr().out.splitlines() == [str(tmp_path / d / "processed_results.csv") for d in "lf"]

    def test_bad_setting_names_the_field(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A setting the destination does not have is a config error naming export.<dest>.<key>."""
        a = _run(tmp_path, "a", "lm_eval", ["lm_eval", "--output_path", "lm_eval"], "m")
        assert main(["export", str(a), "--dest", "local", "--set", "colour=blue"]) == EXIT_CONFIG
        assert "export.local.colour" in capsys.readouterr().err
