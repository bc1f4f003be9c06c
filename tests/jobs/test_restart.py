"""The jobs service as a real process: killed mid-job and started again on the same data directory."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.jobs.conftest import API_KEY_ENV, FakeModel, client_command

N = 4
MSG_INTERRUPTED = "Job failed because the evaluation service stopped while it was running"


class Service:
    """``python -m evalproxy.jobs serve`` on a free port, with a client session bound to it."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.http = aiohttp.ClientSession(base_url=url)

    @classmethod
    async def start(cls, data_dir: Path, log: Path, *args: str) -> Service:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "evalproxy.jobs", "serve", "--port", "0", "--data-dir", str(data_dir), *args,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        assert "listening on " in line, f"the service did not start: see {log}"
        return cls(proc, line.split("listening on ")[1].split()[0])

    async def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def wait_for_status(self, job_id: str, *statuses: str) -> dict[str, Any]:
        job: dict[str, Any] = {}
        async with asyncio.timeout(30):
            while job.get("status") not in statuses:
                await asyncio.sleep(0.1)
                job = await self.json("GET", f"/v1/evaluation/jobs/{job_id}")
        return job

    async def close(self, sig: int = signal.SIGTERM) -> None:
        await self.http.close()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in started:
        await s.close()


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class TestRestart:
    async def test_restart_mid_job_fails_that_job_keeps_the_others_and_resumes_from_cache(
        self, services: list[Service], fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """A job running when the service dies is failed on restart; finished and queued jobs are kept."""
        data, log = tmp_path / "data", tmp_path / "service.log"
        first = await Service.start(data, log, "--max-concurrent", "1")
        services.append(first)
        release = tmp_path / "release"
        await first.json("POST", "/v1/evaluation/targets", {
            "namespace": "team", "name": "fake-model",
            "api_endpoint": {"url": str(fake_upstream.make_url("/v1")), "model_id": "fake/adder",
                             "api_key_name": API_KEY_ENV},
        })
        for name, extra in (("quick", ()), ("held", ("--hold", str(release)))):
            await first.json("POST", "/v1/evaluation/configs", {
                "namespace": "team", "name": name, "command": client_command(*extra),
                "params": {"limit_samples": N},
            })

        def job(config: str) -> dict[str, Any]:
            return {"namespace": "team", "target": "team/fake-model", "config": f"team/{config}"}

        done = await first.json("POST", "/v1/evaluation/jobs", job("quick"))
        await first.wait_for_status(done["id"], "completed")
        held = await first.json("POST", "/v1/evaluation/jobs", job("held"))
        queued = await first.json("POST", "/v1/evaluation/jobs", job("quick"))
        await first.wait_for_status(held["id"], "running")
        await fake_model.wait_for_calls(N + 1)
        assert (await first.json("GET", f"/v1/evaluation/jobs/{queued['id']}"))["status"] == "pending"

        await first.close(signal.SIGKILL)
        assert processes_naming(held["id"])  # its evalproxy run outlived the service

        second = await Service.start(data, log, "--max-concurrent", "1")
        services.append(second)
        failed = await second.json("GET", f"/v1/evaluation/jobs/{held['id']}")
        assert failed["status"] == "failed"
        assert failed["status_details"]["message"] == MSG_INTERRUPTED
        kept = await second.json("GET", f"/v1/evaluation/jobs/{done['id']}")
        assert kept["status"] == "completed"
        results = await second.json("GET", f"/v1/evaluation/jobs/{done['id']}/results")
        assert results["tasks"]["arithmetic"]["metrics"]["accuracy"]["scores"]["accuracy"]["stats"]["count"] == N
        assert (await second.wait_for_status(queued["id"], "completed", "failed"))["status"] == "completed"
        for _ in range(300):  # the orphan was asked to stop: it ends (hooks first)
            if not processes_naming(held["id"]):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the process of {held['id']} is still alive")

        release.touch()
        resumed = await second.json("POST", "/v1/evaluation/jobs", job("held"))
        assert (await second.wait_for_status(resumed["id"], "completed", "failed"))["status"] == "completed"
        assert fake_model.calls == 2 * N  # the held job's first answer came from the cache
        listing = await second.json("GET", "/v1/evaluation/jobs?page_size=100")
        assert listing["pagination"]["total_results"] == 4
