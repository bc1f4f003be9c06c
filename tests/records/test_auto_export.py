"""Auto-export end to end: ``evalproxy run`` with inspect-ai against the fake model exports when the run ends to the
destinations its config names (evalproxy's own ``export:`` and a launcher file's ``execution.auto_export``); the
exports read back with each destination's own tools (``inspect log dump``, the MLflow client, W&B's offline files).

One run is made once per module: an adapter config whose ``export:`` names local, inspect, mlflow with traces, and
wandb offline. A launcher file's plan is read by the same code (``TestPlans``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records import read_results
from evalproxy.records.auto_export import parse_plan, plan_from_config, run_auto_export
from tests.procs import free_port, wait_http_up

from .conftest import FIXTURES

INSPECT = str(Path(sys.executable).parent / "inspect")
ADAPTER = {"interceptors": [{"name": "caching", "config": {"save_requests": True}}, {"name": "endpoint"},
                            {"name": "response_stats"}]}


def _native(root: Path) -> dict[str, Any]:
    return {**ADAPTER, "export": {
        "destinations": ["local", "inspect", "mlflow", "wandb"],
        "mlflow": {"tracking_uri": (root / "mlruns").as_uri(), "experiment_name": "auto", "emit_traces": True,
                   "emit_traces_max_samples": 8, "emit_traces_content_max": 20},
        "wandb": {"project": "auto", "log_mode": "multi_task"},
    }}



@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, str]]]:
    """The run's directory and what ``evalproxy run`` printed."""
    pytest.importorskip("inspect_ai", reason="the runs use inspect-ai (in the test extra)")
    root = tmp_path_factory.mktemp("auto-export")
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "evalproxy.simulator", "--port", str(port), "--wrong", "7,11"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSPECT_", "MLFLOW_", "WANDB_"))}
    env.update(OPENAI_API_KEY="sk-not-a-real-key", FAKE_API_KEY="sk-not-a-real-key", NO_COLOR="1",
               WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true",
               MLFLOW_DISABLE_TELEMETRY="true")  # MLflow 3 sends usage data at exit (seconds, and off the machine)
    try:
        wait_http_up(f"{upstream}/models", fake)
        work = root / "work"
        work.mkdir()
        shutil.copy2(FIXTURES / "sums_task.py", work)
        shutil.copy2(FIXTURES / "sums.jsonl", work)
        (work / "config.yaml").write_text(yaml.safe_dump(_native(root)))
        argv = [sys.executable, "-m", "evalproxy", "run", "-c", "config.yaml", "--upstream", upstream,
                "--model-id", "fake-model", "-o", str(root / "native"), "--log-level", "WARNING", "--",
                INSPECT, "eval", "sums_task.py", "--model", "openai-api/fake/fake-model",
                "--model-base-url", "{proxy_url}", "--display", "none"]
        done = subprocess.run(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=180, check=False)
        text = done.stdout.decode()
        assert done.returncode == 0, text[-3000:]
        yield {"native": (root / "native", text)}
    finally:
        fake.terminate()
        fake.wait(10)


def _dump(log: Path) -> dict[str, Any]:
    """The log as ``inspect log dump`` prints it."""
    done = subprocess.run([INSPECT, "log", "dump", str(log)], capture_output=True, text=True, timeout=120,
                          check=True)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.mark.slow
class TestRunExportsWhenItEnds:
    def test_local_and_inspect_land_in_the_run_dir(self, runs: dict[str, tuple[Path, str]]) -> None:
        """processed_results.json and an inspect log land in the run dir; the log has every sample with its score."""
        run, printed = runs["native"]
        doc = json.loads((run / "processed_results.json").read_text())
        assert doc["benchmarks"]["sums"]["models"]["fake-model"][0]["scores"] == {"sums_match_accuracy": 0.8}
        (log,) = (run / "inspect_logs").glob("*_sums_*.eval")
        assert f"exported to inspect: {log}" in printed
        data = _dump(log)
        assert data["status"] == "success" and data["eval"]["task"] == "sums" and data["eval"]["model"] == "fake-model"
        assert data["results"]["scores"][0]["metrics"]["accuracy"]["value"] == 0.8
        samples = data["samples"]
        assert len(samples) == 10 and sum(s["scores"]["match"]["value"] for s in samples) == 8
        by_id = {s["id"]: s for s in samples}
        q1 = by_id["q1"]
        assert q1["input"] == "What is 1 + 4? Answer with the number only."  # the request the proxy saw
        assert q1["output"]["completion"] == "5" and q1["metadata"]["cache_hit"] is False
        assert q1["output"]["usage"]["input_tokens"] == 10

    def test_mlflow_traces_read_back(self, runs: dict[str, tuple[Path, str]]) -> None:
        """MLflow gets the run with one trace per sample up to the cap: prompt, answer, score, latency, cache hit."""
        mlflow = pytest.importorskip("mlflow")
        run, _ = runs["native"]
        uri = (run.parent / "mlruns").as_uri()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
            client = mlflow.tracking.MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name("auto")
            (mrun,) = client.search_runs([exp.experiment_id])
            traces = client.search_traces(locations=[exp.experiment_id], max_results=100)
            own = {a.path for a in client.list_artifacts(mrun.info.run_id)}
            harness = [a.path for a in client.list_artifacts(mrun.info.run_id, "harness")]
        assert mrun.data.metrics["sums_match_accuracy"] == 0.8 and mrun.data.tags["task"] == "sums"
        assert {"results.yaml", "samples.jsonl", "requests.jsonl", "adapter_config.yaml"} <= own
        assert len(harness) == 1 and harness[0].endswith(".eval")  # inspect's own log, as the harness wrote it
        assert len(traces) == 8  # emit_traces_max_samples
        spans = {t.data.spans[0].name: t.data.spans[0] for t in traces}
        assert all(t.info.request_metadata.get("mlflow.sourceRun") == mrun.info.run_id for t in traces)
        span = spans["sums/q2"]  # 2 + 5: the fake model answers 8
        assert span.attributes["evalproxy.score.match"] == 0.0 and span.attributes["evalproxy.cache_hit"] is False
        assert span.attributes["evalproxy.latency_ms"] > 0 and span.attributes["evalproxy.completion_tokens"] == 1
        prompt = span.inputs["prompt"]
        assert prompt[0]["role"] == "user" and prompt[0]["content"] == "What is 2 + 5? Answe…[truncated]"  # max 20
        assert span.outputs["answer"] == "8" and span.outputs["scores"] == {"match": 0.0}

    def test_wandb_offline_run_written(self, runs: dict[str, tuple[Path, str]]) -> None:
        """W&B (offline) gets the run as one multi_task run named eval-{run id}."""
        run, printed = runs["native"]
        run_id = read_results(run).evalproxy.run_id
        assert f"exported to wandb: evalproxy-{run_id}" in printed
        assert list(run.parent.glob(f"wandb/offline-run-*/run-evalproxy-{run_id}.wandb"))

    def test_failed_destination_is_a_warning_and_the_rest_stand(self, runs: dict[str, tuple[Path, str]],
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
        """A destination that fails when a run ends is a visible warning; the next destination still runs."""
        run, _ = runs["native"]
        copy = tmp_path / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("inspect_logs", "processed_results.json"))
        plan = parse_plan({"destinations": ["inspect", "local"],
                           "inspect": {"output_dir": "/dev/null/inspect_logs"}})  # cannot be made
        assert run_auto_export(copy, plan) == ["local"]
        assert "WARNING: auto-export to inspect failed: " in capsys.readouterr().err
        assert (copy / "processed_results.json").is_file() and (copy / "results.yaml").is_file()


class TestPlans:
    def test_launcher_and_native_places_read_the_same(self) -> None:
        """execution.auto_export.destinations with export.<dest> and evalproxy's top-level export: give one plan."""
        launcher = parse_config({"execution": {"auto_export": {"destinations": ["wandb"]}},
                                 "export": {"wandb": {"project": "p"}},
                                 "target": {"api_endpoint": {"url": "http://x/v1", "model_id": "m"}}})
        native = parse_config({"interceptors": ["endpoint"], "export": {"destinations": ["wandb"],
                                                                        "wandb": {"project": "p"}}})
        a, b = plan_from_config(launcher.sections), plan_from_config(native.sections)
        assert a == b and a is not None and a.destinations == ["wandb"] and a.settings("wandb") == {"project": "p"}
        assert plan_from_config(parse_config({"interceptors": ["endpoint"]}).sections) is None

    def test_a_04_file_exports_where_its_output_section_says(self) -> None:
        """A NeMo 0.4 file's output.export and output.export_config are the same plan as the launcher's words."""
        nel = parse_config({"services": {"m": {"type": "api", "url": "http://x/v1", "model": "m"}},
                            "output": {"export": ["wandb"], "export_config": {"wandb": {"project": "p"}}}})
        plan = plan_from_config(nel.sections)
        assert plan is not None and plan.destinations == ["wandb"] and plan.settings("wandb") == {"project": "p"}

    def test_unknown_destination_names_the_field(self) -> None:
        """A destination that does not exist is refused at load time, naming the field."""
        with pytest.raises(ConfigError) as exc:
            parse_plan({"destinations": ["gsheets"]}, field="export")
        assert exc.value.field == "export.destinations[0]"
