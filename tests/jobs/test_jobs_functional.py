"""The jobs service end to end: real ``evalproxy run`` subprocesses, a real openai SDK client, a fake model."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from tests.jobs.conftest import (
    API_KEY_ENV,
    FakeModel,
    MakeService,
    client_command,
    expected_accuracy,
    wait_for_status,
)

N = 6


async def make_target_and_config(client: TestClient[Any, Any], upstream: TestServer, *,
                                 command: list[str] | None = None, limit: int = N,
                                 name: str = "arith") -> None:
    resp = await client.post("/v1/evaluation/targets", json={
        "namespace": "team", "name": "fake-model",
        "api_endpoint": {"url": str(upstream.make_url("/v1")), "model_id": "fake/adder",
                         "api_key_name": API_KEY_ENV, "type": "chat"},
    })
    assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/evaluation/configs", json={
        "namespace": "team", "name": name, "command": command or client_command(),
        "params": {"limit_samples": limit, "temperature": 0.0},
    })
    assert resp.status == 200, await resp.text()


async def post_job(client: TestClient[Any, Any], config: str = "team/arith") -> dict[str, Any]:
    resp = await client.post("/v1/evaluation/jobs",
                             json={"namespace": "team", "target": "team/fake-model", "config": config})
    assert resp.status == 200, await resp.text()
    job: dict[str, Any] = await resp.json()
    return job


class TestJobRuns:
    async def test_job_completes_with_the_clients_score_and_a_second_is_served_from_cache(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """A job runs the client to completed with its own score and a ZIP holding the report; a repeat costs 0 calls."""
        client = await make_service()
        await make_target_and_config(client, fake_upstream)

        job = await post_job(client)
        assert job["id"].startswith("eval-") and len(job["id"]) == 21
        assert job["status"] == "created"
        assert job["target"]["api_endpoint"]["model_id"] == "fake/adder"
        assert job["config"]["command"][0].endswith("python") or "python" in job["config"]["command"][0]
        done = await wait_for_status(client, job["id"], "completed", "failed")
        assert done["status"] == "completed", done["status_details"]
        assert done["status_details"] == {"message": "Job completed successfully", "task_status": {},
                                          "progress": 100.0}
        assert fake_model.calls == N
        assert all(h == f"Bearer {api_key}" for h in fake_model.auth_seen)

        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/results")
        assert resp.status == 200
        results = await resp.json()
        score = results["tasks"]["arithmetic"]["metrics"]["accuracy"]["scores"]["accuracy"]
        assert score["value"] == expected_accuracy(N)
        assert score["stats"]["count"] == N
        assert results["job"] == job["id"] and done["result"] == results["id"]

        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/download")
        assert resp.status == 200 and resp.content_type == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
        names = archive.namelist()
        assert f"{job['id']}/report.html" in names
        own = yaml.safe_load(archive.read(f"{job['id']}/harness/results.yml"))
        assert own["tasks"] == results["tasks"]

        again = await post_job(client)
        second = await wait_for_status(client, again["id"], "completed", "failed")
        assert second["status"] == "completed"
        assert fake_model.calls == N
        resp = await client.get(f"/v1/evaluation/jobs/{again['id']}/results")
        assert (await resp.json())["tasks"] == results["tasks"]
