"""A job config's ``auto_export`` field: checked when the config is created, handed to the job's ``evalproxy run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp.test_utils import TestServer

from evalproxy.adapter.config import load_config
from evalproxy.jobs.launch import prepare
from evalproxy.records.auto_export import plan_from_config
from tests.jobs.conftest import MakeService, client_command, wait_for_status

PLAN = {"destinations": ["local", "mlflow"], "mlflow": {"experiment_name": "jobs", "emit_traces": True}}


class TestAutoExportField:
    async def test_bad_destination_is_a_422_naming_the_field(self, make_service: MakeService) -> None:
        """A config whose auto_export names an unknown destination is refused with the field named."""
        client = await make_service()
        resp = await client.post("/v1/evaluation/configs", json={
            "namespace": "team", "name": "arith", "command": client_command(), "params": {"limit_samples": 2},
            "auto_export": {"destinations": ["gsheets"]}})
        assert resp.status == 422
        body = await resp.json()
        assert body["field"] == "auto_export" and "auto_export.destinations[0]" in body["detail"]
        resp = await client.post("/v1/evaluation/configs", json={
            "namespace": "team", "name": "arith", "command": client_command(), "params": {"limit_samples": 2},
            "auto_export": PLAN})
        assert resp.status == 200 and (await resp.json())["auto_export"] == PLAN

    def test_job_run_config_carries_the_plan(self, tmp_path: Path) -> None:
        """The config file a job's evalproxy run reads names the same destinations and settings."""
        target = {"api_endpoint": {"url": "http://127.0.0.1:9/v1", "model_id": "m", "type": "chat"}}
        config = {"command": ["true"], "params": {}, "adapter_config": None, "auto_export": PLAN}
        argv = prepare(tmp_path / "job", target, config, tmp_path / "cache", sys.executable)
        cfg = argv[argv.index("-c") + 1]
        plan = plan_from_config(load_config(cfg).sections, source=cfg)
        assert plan is not None and plan.destinations == ["local", "mlflow"]
        assert plan.settings("mlflow") == PLAN["mlflow"]


async def test_a_job_exports_where_its_config_says_when_it_ends(make_service: MakeService, fake_upstream: TestServer,
                                                                  api_key: str, tmp_path: Path) -> None:
    """A real job whose config names auto_export ends completed with processed_results.json written where the
    plan says, holding the job's score (its run record reads the NeMo-format results.yml the job's command wrote)."""
    client = await make_service()
    resp = await client.post("/v1/evaluation/targets", json={
        "namespace": "team", "name": "fake-model",
        "api_endpoint": {"url": str(fake_upstream.make_url("/v1")), "model_id": "fake/adder", "type": "chat"}})
    assert resp.status == 200, await resp.text()
    out = tmp_path / "exported"
    resp = await client.post("/v1/evaluation/configs", json={
        "namespace": "team", "name": "arith", "command": client_command(), "params": {"limit_samples": 4},
        "auto_export": {"destinations": ["local"], "local": {"output_dir": str(out)}}})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/evaluation/jobs",
                             json={"namespace": "team", "target": "team/fake-model", "config": "team/arith"})
    job = await resp.json()
    done = await wait_for_status(client, job["id"], "completed", "failed")
    assert done["status"] == "completed", done["status_details"]
    exported = json.loads((out / "processed_results.json").read_text())
    (entry,) = exported["benchmarks"]["arithmetic"]["models"]["fake/adder"]  # the job's run record held the score
    assert entry["scores"] == {"arithmetic_accuracy_accuracy": 0.5}
