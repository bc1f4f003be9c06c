"""The jobs service end to end: real ``evalproxy run`` subprocesses, a real openai SDK client, a fake model."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.jobs import launch
from tests.jobs.conftest import (
    API_KEY_ENV,
    FakeModel,
    MakeService,
    auth_seen,
    calls,
    client_command,
    expected_accuracy,
    wait_for_calls,
    wait_for_status,
)
from tests.storage.test_redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

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
        """A job completes with the client's own score and a ZIP holding the report; a repeat costs 0 calls."""
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
        assert calls(fake_model) == N
        assert all(h == f"Bearer {api_key}" for h in auth_seen(fake_model))

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
        assert calls(fake_model) == N
        resp = await client.get(f"/v1/evaluation/jobs/{again['id']}/results")
        assert (await resp.json())["tasks"] == results["tasks"]

    async def test_api_key_stays_out_of_records_logs_and_downloads(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """The key reaches the model but no record, log, download or database file, even if the harness prints it."""
        client = await make_service()
        await make_target_and_config(client, fake_upstream, limit=2,
                                     command=client_command("--print-env", API_KEY_ENV))
        job = await post_job(client)
        done = await wait_for_status(client, job["id"], "completed", "failed")
        assert done["status"] == "completed"
        assert auth_seen(fake_model) == [f"Bearer {api_key}"] * 2

        seen: list[bytes] = []
        for path in (f"/v1/evaluation/jobs/{job['id']}", f"/v1/evaluation/jobs/{job['id']}/logs",
                     "/v1/evaluation/jobs", "/v1/evaluation/targets", "/v1/evaluation/configs",
                     f"/v1/evaluation/jobs/{job['id']}/results", f"/v1/evaluation/jobs/{job['id']}/status"):
            resp = await client.get(path)
            assert resp.status == 200
            seen.append(await resp.read())
        logs = seen[1].decode()
        assert f"{API_KEY_ENV}=***" in logs  # the harness did print it: the service redacted the line
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/download")
        archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
        seen += [archive.read(name) for name in archive.namelist()]
        seen += [p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert not [s for s in seen if api_key.encode() in s]


class TestCancel:
    async def test_cancel_while_running_stops_the_harness_and_hooks_still_run(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """A running job shows its progress; cancelled, it ends as cancelled and its proxy still writes the report."""
        client = await make_service()
        await make_target_and_config(client, fake_upstream,
                                     command=client_command("--hold", str(tmp_path / "never")))
        job = await post_job(client)
        await wait_for_status(client, job["id"], "running")
        await wait_for_calls(fake_model, 1)
        status: dict[str, Any] = {}

        async def progressed() -> bool:  # the proxy writes its statistics every few seconds
            status.update(await (await client.get(f"/v1/evaluation/jobs/{job['id']}/status")).json())
            return bool(status["progress"])

        await wait_until(progressed, what="the job's progress", seconds=30, every=0.1)
        assert status == {"message": "Job is running", "task_status": {}, "progress": pytest.approx(100 / N),
                          "status": "running"}

        resp = await client.post(f"/v1/evaluation/jobs/{job['id']}/cancel")
        assert resp.status == 200
        cancelled = await resp.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["status_details"]["message"] == "Job was cancelled"
        assert calls(fake_model) == 1

        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/download")
        names = zipfile.ZipFile(io.BytesIO(await resp.read())).namelist()
        assert f"{job['id']}/report.html" in names
        resp = await client.post(f"/v1/evaluation/jobs/{job['id']}/cancel")
        assert resp.status == 409

    async def test_delete_of_a_running_job_cancels_it_then_removes_it(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """DELETE on a running job answers with its final cancelled record, and then the job is gone."""
        client = await make_service()
        await make_target_and_config(client, fake_upstream,
                                     command=client_command("--hold", str(tmp_path / "never")))
        job = await post_job(client)
        await wait_for_status(client, job["id"], "running")

        resp = await client.delete(f"/v1/evaluation/jobs/{job['id']}")
        assert resp.status == 200
        assert (await resp.json())["status"] == "cancelled"
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}")
        assert resp.status == 404
        assert not (tmp_path / "data" / "jobs" / job["id"]).exists()


class TestFailures:
    @pytest.mark.parametrize("command", [
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        ["/nonexistent/harness", "--url", "{proxy_url}"],
    ], ids=["exits-non-zero", "cannot-start"])
    async def test_failing_command_fails_with_the_launch_message(
        self, make_service: MakeService, fake_upstream: TestServer, api_key: str, command: list[str],
    ) -> None:
        """A harness that exits non-zero, or cannot start at all, leaves the job failed with NeMo's launch message."""
        client = await make_service()
        await make_target_and_config(client, fake_upstream, command=command)
        job = await post_job(client)
        failed = await wait_for_status(client, job["id"], "completed", "failed")
        assert failed["status"] == "failed"
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/status")
        status = await resp.json()
        assert status["message"] == ("Unable to launch the evaluation job because there is a problem in the "
                                     "target, config, or environment")
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/results")
        assert resp.status == 404
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/logs")
        assert "evalproxy" in await resp.text()

    async def test_missing_api_key_variable_fails_the_job_before_it_starts(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A target whose api_key_name is not set in the service's environment fails with the launch message."""
        monkeypatch.delenv(API_KEY_ENV, raising=False)
        client = await make_service()
        await make_target_and_config(client, fake_upstream)
        job = await post_job(client)
        failed = await wait_for_status(client, job["id"], "completed", "failed")
        assert failed["status_details"]["message"].startswith("Unable to launch the evaluation job")
        resp = await client.get(f"/v1/evaluation/jobs/{job['id']}/logs")
        assert API_KEY_ENV in await resp.text()
        assert calls(fake_model) == 0


class TestQueue:
    async def test_max_concurrent_one_keeps_the_second_job_pending(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """With one slot a second job stays pending until the first ends, then runs; a queued job can be cancelled."""
        client = await make_service(max_concurrent=1)
        release = tmp_path / "release"
        await make_target_and_config(client, fake_upstream, limit=2, command=client_command("--hold", str(release)))
        first = await post_job(client)
        await wait_for_status(client, first["id"], "running")
        second = await post_job(client)
        pending = await wait_for_status(client, second["id"], "pending")
        assert pending["status_details"]["message"] == "Job is pending"
        resp = await client.get(f"/v1/evaluation/jobs/{first['id']}/status")
        assert (await resp.json())["message"] == "Job is running"

        third = await post_job(client)
        await wait_for_status(client, third["id"], "pending")
        resp = await client.post(f"/v1/evaluation/jobs/{third['id']}/cancel")
        assert (await resp.json())["status"] == "cancelled"
        assert not (tmp_path / "data" / "jobs" / third["id"]).exists()  # it never started

        release.touch()
        assert (await wait_for_status(client, first["id"], "completed", "failed"))["status"] == "completed"
        assert (await wait_for_status(client, second["id"], "completed", "failed"))["status"] == "completed"


class TestSharedStore:
    async def test_local_jobs_share_the_services_store_without_its_url_on_a_command_line(
        self, make_service: MakeService, fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        redis_server: RedisServer, tmp_path: Path,
    ) -> None:
        """With jobs serve --cache-url, a local job's evalproxy run gets the store URL by the name of a variable of
        its environment (so a password never shows in `ps`), caches there, and a second job of the config pays 0."""
        argv = launch.prepare(tmp_path / "j", {"api_endpoint": {"url": "http://m/v1", "model_id": "m", "type": "chat"}},
                              {"command": ["true"], "params": {}}, tmp_path / "cache", sys.executable,
                              redis_server.url)
        assert "--cache-url-env" in argv and redis_server.url not in " ".join(argv)
        client = await make_service(cache_url=redis_server.url)
        await make_target_and_config(client, fake_upstream, limit=3)
        done = await wait_for_status(client, (await post_job(client))["id"], "completed", "failed")
        assert done["status"] == "completed", done["status_details"]
        assert calls(fake_model) == 3
        again = await wait_for_status(client, (await post_job(client))["id"], "completed", "failed")
        assert again["status"] == "completed" and calls(fake_model) == 3
