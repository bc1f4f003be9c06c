"""The jobs service as a real process: killed mid-job and started again on the same data directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from tests.jobs.conftest import API_KEY_ENV, FakeModel, Service, client_command

N = 4
MSG_INTERRUPTED = "Job failed because the evaluation service stopped while it was running"


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
