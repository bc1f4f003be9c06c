"""inspect-ai logs from run records of other harnesses (lm-eval, nemo-evaluator BYOB), read by ``inspect log dump``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evalproxy.records.harnesses import read_harness_output, write_samples
from evalproxy.records.inspect_export import export_to_inspect
from evalproxy.records.results import build_record, write_results

from .conftest import copy_fixture

pytest.importorskip("inspect_ai", reason="the inspect export needs inspect-ai (in the test extra)")

INSPECT = str(Path(sys.executable).parent / "inspect")
HARNESSES = {
    "lm_eval": ["lm_eval", "--output_path", "lm_eval"],
    "nemo_byob": ["nemo-evaluator", "run_eval", "--output_dir", "nemo_byob"],
}


def _run_dir(root: Path, fixture: str) -> Path:
    """A run directory holding the record and samples of a harness's real output files."""
    work = root / f"work-{fixture}"
    work.mkdir()
    copy_fixture(fixture, work)
    h = read_harness_output(HARNESSES[fixture], workdir=work)
    run = root / fixture
    write_results(run, build_record(command=HARNESSES[fixture], output_dir=run, params={}, results=h.results,
                                    model_id="fake-model", run_id=f"id-{fixture}", harness=h.info(),
                                    finished_at="2026-01-02T03:04:05"))
    write_samples(run, h.samples)
    return run


def _dump_all(logs: list[Path]) -> list[dict[str, Any]]:
    """``inspect log dump`` of each log (run side by side)."""
    procs = [subprocess.Popen([INSPECT, "log", "dump", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for p in logs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()
        out.append(json.loads(stdout))
    return out


@pytest.mark.slow
def test_lm_eval_and_nemo_runs_dump_with_every_sample(tmp_path: Path) -> None:
    """Each exported log holds the task's score and every sample with its input, target, answer and score."""
    runs = [_run_dir(tmp_path, f) for f in HARNESSES]
    logs = export_to_inspect(runs, output_dir=tmp_path / "logs", fmt="json")
    assert [p.parent for p in logs] == [tmp_path / "logs"] * 2
    lm, nemo = _dump_all(logs)
    assert lm["eval"]["task"] == "sums" and lm["eval"]["model"] == "fake-model" and lm["status"] == "success"
    assert lm["results"]["scores"][0]["metrics"]["exact_match"]["value"] == 0.8
    assert len(lm["samples"]) == 10
    first = next(s for s in lm["samples"] if s["id"] == "1")
    assert first["input"] == "What is 2 + 5? Answer with the number only." and first["target"] == "7"
    assert first["output"]["completion"] == "8" and first["scores"]["exact_match"]["value"] == 0.0
    assert sum(s["scores"]["exact_match"]["value"] for s in lm["samples"]) == 8
    samples = nemo["samples"]
    assert nemo["results"]["scores"] and samples and all(s["input"] and s["target"] for s in samples)
    assert all(s["scores"] and s["output"]["completion"] is not None for s in samples)


def test_default_place_is_the_run_dir(tmp_path: Path) -> None:
    """Without an output dir the logs go to the run's own inspect_logs/, one .eval per task."""
    run = _run_dir(tmp_path, "lm_eval")
    (log,) = export_to_inspect([run])
    assert log.parent == run / "inspect_logs" and log.suffix == ".eval" and "_sums_id-lm_eval" in log.name


def test_a_record_with_a_broken_start_time_still_exports(tmp_path: Path) -> None:
    """A run record whose started_at is no time (edited by hand) exports, its log starting when the run ended."""
    work = tmp_path / "work"
    work.mkdir()
    copy_fixture("lm_eval", work)
    h = read_harness_output(HARNESSES["lm_eval"], workdir=work)
    run = tmp_path / "run"
    write_results(run, build_record(command=HARNESSES["lm_eval"], output_dir=run, params={}, results=h.results,
                                    model_id="fake-model", harness=h.info(), started_at="not a time",
                                    finished_at="2026-01-02T03:04:05"))
    assert "not a time" in (run / "results.yaml").read_text()
    (log,) = export_to_inspect([run], fmt="json")
    stats = json.loads(log.read_text())["stats"]
    assert stats["started_at"] == stats["completed_at"]
