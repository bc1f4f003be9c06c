"""MLflow export against a real local tracking store."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from evalproxy.records import build_record, write_results
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import HarnessInfo, Results, ScoreStats

mlflow = pytest.importorskip("mlflow", reason="MLflow export needs the evalproxy[mlflow] extra")

from evalproxy.records.mlflow_export import (  # noqa: E402  (after the skip check)
    MlflowSettings,
    default_tracking_uri,
    export_to_mlflow,
)


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    results = Results()
    add_score(results.tasks, "mbpp", "pass@1", "pass@1", 0.25, ScoreStats(stderr=0.05))
    write_results(run, build_record(
        command="bigcode", output_dir=run, params={"temperature": 0.2, "max_tokens": 512}, results=results,
        model_id="org/m", endpoint_type="chat", run_id="inv-1",
        adapter_config={"interceptors": [{"name": "system_message", "config": {"system_message": "Code only."}}]},
        harness=HarnessInfo(name="bigcode-evaluation-harness", status="success")))
    (run / "eval_factory_metrics.json").write_bytes(orjson.dumps(
        {"response_stats": {"count": 40, "avg_latency_ms": 123.5, "status_codes": {"200": 40},
                            "first_request_time": 1.7e9, "runs": {"inv-1": {"count": 40}}},
         "caching": {"hits": 4, "misses": 36, "hit_ratio": 0.1}}))
    (run / "report.html").write_text("<html></html>")
    (run / "debug.json").write_text("{}")  # one of NeMo's excluded artifact names
    return run


class TestMlflowExport:
    def test_one_mlflow_run_per_evaluation_run(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Params, scores, curated proxy statistics, tags and artifacts land in one MLflow run; a second export
        updates it (no second run), and skip_existing leaves it alone."""
        # A file store: real MLflow storage, and much faster to open than a fresh sqlite store (no migrations).
        uri = (tmp_path / "mlruns").as_uri()
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the export opts in for a file: store
        run = _run_dir(tmp_path)
        settings = MlflowSettings(tracking_uri=uri, experiment_name="evals", tags={"team": "qa"},
                                  extra_metadata={"phase": "baseline"}, exclude_patterns=["report.*"])
        ids = export_to_mlflow([run], settings)
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this test's own client
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        got = client.get_run(ids[0])
        assert got.data.params["config.params.temperature"] == "0.2"
        assert got.data.params["adapter_config.interceptors.system_message.system_message"] == "Code only."
        assert got.data.params["target.model_id"] == "org/m" and got.data.params["phase"] == "baseline"
        assert got.data.metrics["mbpp_pass_1_pass_1"] == 0.25
        proxy = {k: v for k, v in got.data.metrics.items() if k.startswith("proxy.")}
        assert proxy == {"proxy.requests": 40, "proxy.latency_ms_avg": 123.5, "proxy.cache_hits": 4,
                         "proxy.cache_misses": 36, "proxy.cache_hit_ratio": 0.1}
        tags = got.data.tags
        assert tags["evalproxy.run_id"] == tags["job_id"] == "inv-1" and got.info.status == "FINISHED"
        assert (tags["task"], tags["harness"], tags["model"]) == ("mbpp", "bigcode-evaluation-harness", "org/m")
        assert tags["team"] == "qa" and tags["mlflow.runName"] == "eval-inv-1"
        artifacts = {a.path for a in client.list_artifacts(ids[0])}
        assert {"results.yaml", "eval_factory_metrics.json"} <= artifacts
        assert not {"report.html", "debug.json"} & artifacts  # exclude_patterns and NeMo's own exclusions
        results = run / "results.yaml"
        results.write_text(results.read_text().replace("value: 0.25", "value: 0.5"))
        assert export_to_mlflow([run], settings) == ids
        assert client.get_run(ids[0]).data.metrics["mbpp_pass_1_pass_1"] == 0.5  # the re-export updated it
        results.write_text(results.read_text().replace("value: 0.5", "value: 0.75"))
        skip = settings.model_copy(update={"skip_existing": True})
        assert export_to_mlflow([run], skip) == ids
        assert client.get_run(ids[0]).data.metrics["mbpp_pass_1_pass_1"] == 0.5
        assert len(client.search_runs([got.info.experiment_id])) == 1

    def test_default_store_is_local_and_works(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no tracking URI anywhere the export writes a local store in the current directory (MLflow 3 too)."""
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        monkeypatch.chdir(tmp_path)
        uri = default_tracking_uri()
        assert uri in ((tmp_path / "mlruns").as_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}")
        (rid,) = export_to_mlflow([_run_dir(tmp_path)])
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        assert mlflow.tracking.MlflowClient(tracking_uri=uri).get_run(rid).data.metrics["mbpp_pass_1_pass_1"] == 0.25
