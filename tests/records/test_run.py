"""record_run: the end of an evalproxy run, from harness files to results.yaml."""

from __future__ import annotations

import time
from pathlib import Path

from evalproxy.records import ObservedParams, read_results, record_run
from evalproxy.records.harnesses import read_samples

from .conftest import copy_fixture


class TestRecordRun:
    def test_known_harness_writes_scores_and_samples(self, workdir: Path, tmp_path: Path) -> None:
        """An lm-eval command's scores, observed params and per-sample results land in the run dir."""
        copy_fixture("lm_eval", workdir)
        obs = ObservedParams()
        obs.observe({"temperature": 0.0, "max_tokens": 16, "seed": 1})
        run_dir = tmp_path / "run"
        rec = record_run(run_dir, argv=["lm_eval", "--output_path", "lm_eval", "--model_args", "api_key=sk-x"],
                         workdir=workdir, started_at=0,  # copied fixtures keep their old mtimes
                         exit_code=0, observed=obs,
                         api_url="http://user:pw@127.0.0.1:9/v1", model_id="m", run_id="abc")
        assert read_results(run_dir) == rec
        assert rec.results.flat() == {"sums_exact_match_exact_match": 0.8}
        # NeMo's names, from lm-eval's own record; what was sent is kept apart, under its wire names.
        assert rec.config.params == {"temperature": 0.0, "max_new_tokens": 16, "parallelism": 1, "task": "sums"}
        assert set(rec.evalproxy.params_from.values()) == {"harness"}
        assert rec.evalproxy.observed_params == {"temperature": 0.0, "max_tokens": 16, "seed": 1}
        assert rec.config.model_extra == {"type": "sums"} and rec.evalproxy.type_from == "harness"
        assert "sk-x" not in rec.command and rec.target.api_endpoint.url == "http://***@127.0.0.1:9/v1"
        assert rec.harness.name == "lm-evaluation-harness" and rec.harness.files
        assert len(list(read_samples(run_dir))) == 10

    def test_unknown_harness_writes_a_record_without_scores(self, workdir: Path, tmp_path: Path) -> None:
        """An unknown command still gets a results.yaml, with no scores and the reason in harness.reason."""
        rec = record_run(tmp_path / "run", argv=["./eval.sh"], workdir=workdir, started_at=time.time(),
                         exit_code=3)
        assert rec.results.is_empty() and rec.harness.status == "unknown"
        assert rec.harness.reason is not None and "eval.sh" in rec.harness.reason
        assert rec.evalproxy.exit_code == 3 and not (tmp_path / "run" / "samples.jsonl").exists()
