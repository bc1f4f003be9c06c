"""The jobs service as a real process: killed mid-job and started again on the same data directory."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.jobs.conftest import API_KEY_ENV, FakeModel, Service, calls, client_command, wait_for_calls

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

N = 4


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


async def until(check: Any, what: str, seconds: float = 30) -> None:
    """Poll ``check()`` until it is true (the limit only stops a hung test)."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                if check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never true: {what}") from None


CHATTY = ("import pathlib, sys, time\n"
          "i = 0\n"
          "while not pathlib.Path(sys.argv[1]).exists():\n"
          "    print('tick', i, flush=True); i += 1; time.sleep(0.02)\n"
          "print('bye', flush=True)\n")


class TestRestart:
    async def test_job_that_ends_while_the_service_is_down_is_reported_as_it_ended(
        self, services: list[Service], fake_upstream: TestServer, fake_model: FakeModel, api_key: str,
        tmp_path: Path,
    ) -> None:
        """A job that completes while the service is killed is completed, with its results, after the restart;
        finished and queued jobs are kept."""
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
        await wait_for_calls(fake_model, N + 1)
        assert (await first.json("GET", f"/v1/evaluation/jobs/{queued['id']}"))["status"] == "pending"

        await first.close(signal.SIGKILL)
        assert processes_naming(held["id"])  # the job outlived the service
        release.touch()
        await until(lambda: not processes_naming(held["id"]), "the held job ends")

        second = await Service.start(data, log, "--max-concurrent", "1")
        services.append(second)
        ended = await second.json("GET", f"/v1/evaluation/jobs/{held['id']}")
        assert ended["status"] == "completed", ended["status_details"]
        results = await second.json("GET", f"/v1/evaluation/jobs/{held['id']}/results")
        assert results["tasks"]["arithmetic"]["metrics"]["accuracy"]["scores"]["accuracy"]["stats"]["count"] == N
        kept = await second.json("GET", f"/v1/evaluation/jobs/{done['id']}")
        assert kept["status"] == "completed"
        assert (await second.wait_for_status(queued["id"], "completed", "failed"))["status"] == "completed"
        assert calls(fake_model) == 2 * N  # the queued job was answered from the cache
        listing = await second.json("GET", "/v1/evaluation/jobs?page_size=100")
        assert listing["pagination"]["total_results"] == 3

    async def test_kill_9_leaves_a_running_job_alive_and_the_restart_watches_it(
        self, services: list[Service], tmp_path: Path,
    ) -> None:
        """kill -9 of the service leaves a chatty job running with its log growing; the restarted service reports
        it running, then completed."""
        data, log = tmp_path / "data", tmp_path / "service.log"
        first = await Service.start(data, log)
        services.append(first)
        release = tmp_path / "release"
        job = await first.json("POST", "/v1/evaluation/jobs", {
            "target": {"api_endpoint": {"url": "http://127.0.0.1:9/v1", "model_id": "m"}},
            "config": {"command": [sys.executable, "-c", CHATTY, str(release)]},
        })
        job_log = data / "jobs" / job["id"] / "evalproxy_run.log"
        await first.wait_for_status(job["id"], "running")
        await until(lambda: job_log.is_file() and b"tick" in job_log.read_bytes(), "the job prints")

        await first.close(signal.SIGKILL)
        size = job_log.stat().st_size
        await until(lambda: job_log.stat().st_size > size, "the log grows after kill -9")
        assert processes_naming(job["id"])

        second = await Service.start(data, log)
        services.append(second)
        assert (await second.json("GET", f"/v1/evaluation/jobs/{job['id']}"))["status"] == "running"
        async with second.http.get(f"/v1/evaluation/jobs/{job['id']}/logs", params={"tail": "1"}) as resp:
            assert (await resp.text()).startswith("tick ")
        release.touch()
        ended = await second.wait_for_status(job["id"], "completed", "failed")
        assert ended["status"] == "completed", ended["status_details"]
        assert b"bye\n" in job_log.read_bytes()

    async def test_reattached_job_can_be_cancelled(self, services: list[Service], tmp_path: Path) -> None:
        """A job the restarted service found still running is cancelled like its own: it ends, and is cancelled."""
        data, log = tmp_path / "data", tmp_path / "service.log"
        first = await Service.start(data, log, "--grace-period", "10")
        services.append(first)
        job = await first.json("POST", "/v1/evaluation/jobs", {
            "target": {"api_endpoint": {"url": "http://127.0.0.1:9/v1", "model_id": "m"}},
            "config": {"command": [sys.executable, "-c", CHATTY, str(tmp_path / "never")]},
        })
        await first.wait_for_status(job["id"], "running")
        await first.close(signal.SIGKILL)
        second = await Service.start(data, log, "--grace-period", "10")
        services.append(second)
        cancelled = await second.json("POST", f"/v1/evaluation/jobs/{job['id']}/cancel")
        assert cancelled["status"] == "cancelled"
        await until(lambda: not processes_naming(job["id"]), "the cancelled job's processes end")
