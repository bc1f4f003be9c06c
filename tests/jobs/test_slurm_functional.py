"""The jobs service on a real single-node Slurm cluster (deploy/slurm/local-cluster.sh), one Redis for the cache.

Every job is a real batch job: ``sbatch`` runs ``evalproxy run`` on the node, which asks the simulator through its
own proxy; states come from ``scontrol``. The cluster is started once for the module (and stopped at its end when
this module started it); the tests are skipped, saying why, when it cannot run here (not root, or Slurm's and
munge's packages missing: ``.ci/setup`` installs them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.jobs.executors.slurm import SlurmExecutor
from evalproxy.jobs.wrap import write_exit
from evalproxy.simulator import SimulatedModel
from tests.jobs.conftest import (
    API_KEY,
    API_KEY_ENV,
    MakeService,
    Service,
    calls,
    client_command,
    expected_accuracy,
    wait_for_status,
)
from tests.procs import free_port
from tests.storage.test_redis_server import RedisServer
from tests.waiting import wait_until

HF_TOKEN = "hf_never-on-slurmctlds-disk-31"
"""A credential of the service's environment that no target names (a harness may need it)."""

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "slurm" / "local-cluster.sh"
POLL = 0.2


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (deploy/slurm/local-cluster.sh starts slurmctld, slurmd, munged)"
    missing = [name for name in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(name) is None]
    if missing:
        return f"Slurm or munge is not installed ({', '.join(missing)} missing; .ci/setup installs slurm-wlm, munge)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (see .ci/setup)"
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The single-node cluster, up for the module; stopped afterwards unless it was already running."""
    why = _why_not()
    if why:
        pytest.skip(why)
    was_up = subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode == 0
    started = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    yield
    if not was_up:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory, cluster: None) -> Iterator[RedisServer]:
    """One redis-server for the module: the cache every node shares (each test's config has its own prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def model() -> AsyncIterator[tuple[SimulatedModel, str]]:
    """The simulator on 127.0.0.1 (the node is this machine) and its /v1 URL."""
    from evalproxy.simulator import sums
    from tests.jobs.conftest import wrong

    fake = SimulatedModel(answers=sums(wrong))
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
async def slurm_service(make_service: MakeService, shared_redis: RedisServer, api_key: str,
                        ) -> TestClient[Any, Any]:
    """The jobs service, in this process, submitting to the cluster, its cache in the shared Redis."""
    return await make_service(executor="slurm", cache_url=shared_redis.url, poll_interval=POLL)


async def _scontrol(slurm_id: int) -> dict[str, str]:
    """Slurm's own record of the job (``scontrol show job``)."""
    return await asyncio.to_thread(_scontrol_now, slurm_id)


def _scontrol_now(slurm_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", str(slurm_id)], capture_output=True, text=True,
                         check=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


async def _slurm_id(data_dir: Path, job_id: str) -> int:
    """The Slurm id the service recorded for the job (read from its database)."""
    return await asyncio.to_thread(_slurm_id_now, data_dir, job_id)


def _slurm_id_now(data_dir: Path, job_id: str) -> int:
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        row = conn.execute("SELECT slurm_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def _slurm_disk(slurm_id: int) -> list[Path]:
    """Where Slurm keeps the job on disk: its directory in the controller's StateSaveLocation (environment,
    script) and in the node's SlurmdSpoolDir (the script as the node runs it)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    config = {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines())}
    state, spool = Path(config["StateSaveLocation"]), Path(config["SlurmdSpoolDir"])
    return [*state.glob(f"hash.*/job.{slurm_id}"), *spool.glob(f"job{slurm_id:05d}")]


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    """Every file under ``roots`` whose bytes hold one of ``needles`` (as 'path: needle')."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def _saved_environment(slurm_id: int) -> bytes:
    """The environment slurmctld saved for the job (``hash.N/job.ID/environment`` in its StateSaveLocation)."""
    files = [d / "environment" for d in _slurm_disk(slurm_id) if (d / "environment").is_file()]
    assert files, f"no saved environment for Slurm job {slurm_id}"
    return files[0].read_bytes()


async def _answers_stored(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return sum([await client.hlen(key) for key in await client.keys("*answers")])
    finally:
        await client.aclose()


def _job(url: str, command: list[str], limit: int) -> dict[str, Any]:
    return {"target": {"api_endpoint": {"url": url, "model_id": "sim", "api_key_name": API_KEY_ENV}},
            "config": {"command": command, "params": {"limit_samples": limit}}}


async def _post(client: TestClient[Any, Any], body: dict[str, Any]) -> str:
    resp = await client.post("/v1/evaluation/jobs", json=body)
    assert resp.status == 200, await resp.text()
    job_id: str = (await resp.json())["id"]
    return job_id


class TestSlurmJobs:
    async def test_jobs_complete_or_fail_with_slurms_reason_and_share_one_cache(
            self, slurm_service: TestClient[Any, Any], model: tuple[SimulatedModel, str], tmp_path: Path) -> None:
        """Two jobs of one config and one whose command exits 3, submitted at once: the two end completed with
        their results while the model sees each prompt once (one Redis), the third ends failed with Slurm's state,
        reason and exit code in its message."""
        fake, url = model
        body = _job(url, client_command(), 6)
        first, second, failing = await asyncio.gather(
            _post(slurm_service, body), _post(slurm_service, body),
            _post(slurm_service, _job(url, [sys.executable, "-c", "import sys; sys.exit(3)"], 2)))
        done = [await wait_for_status(slurm_service, j, "completed", "failed") for j in (first, second, failing)]
        assert [d["status"] for d in done] == ["completed", "completed", "failed"], [d["status_details"] for d in done]
        assert calls(fake) == 6
        for job_id in (first, second):
            results = await (await slurm_service.get(f"/v1/evaluation/jobs/{job_id}/results")).json()
            score = results["tasks"]["arithmetic"]["metrics"]["accuracy"]["scores"]["accuracy"]["value"]
            assert score == pytest.approx(expected_accuracy(6))
            assert (await _scontrol(await _slurm_id(tmp_path / "data", job_id)))["JobState"] == "COMPLETED"
        message = done[2]["status_details"]["message"]
        assert "ended FAILED, NonZeroExitCode, exit code 3" in message, message
        log = await (await slurm_service.get(f"/v1/evaluation/jobs/{first}/logs")).text()
        assert "evalproxy listening on" in log and API_KEY not in log

    async def test_a_job_whose_ticket_is_refused_fails_saying_so_and_runs_nothing(
            self, make_service: MakeService, shared_redis: RedisServer, model: tuple[SimulatedModel, str],
            tmp_path: Path, api_key: str) -> None:
        """A service whose --public-url names another service: the job's fetch is refused there, the job ends
        failed with the refusal in its status message and its log, and its harness never ran."""
        fake, url = model
        other = await make_service(data_dir=tmp_path / "other")
        service = await make_service(executor="slurm", cache_url=shared_redis.url, poll_interval=POLL,
                                     public_url=str(other.make_url("")).rstrip("/"))
        job_id = await _post(service, _job(url, client_command(), 2))
        failed = await wait_for_status(service, job_id, "failed")
        message = failed["status_details"]["message"]
        assert "exit code 78" in message and "the job could not fetch its secrets" in message, message
        assert "refused the job's ticket (403: this ticket is not job" in message, message
        log = await (await service.get(f"/v1/evaluation/jobs/{job_id}/logs")).text()
        assert "refused the job's ticket" in log and "evalproxy listening on" not in log
        assert calls(fake) == 0

    async def test_a_job_slurm_forgot_ends_as_its_exit_file_says(self, cluster: None, tmp_path: Path) -> None:
        """Without accounting (this cluster has none: sacct says so), a job scontrol no longer knows (a service
        restarted after MinJobAge) ends as the exit status its wrapper wrote: 0 completed, else failed."""
        executor = SlurmExecutor(poll=POLL)
        try:
            assert await executor.look(99999999) is None
            for code, status in ((0, "completed"), (2, "failed")):
                job_dir = tmp_path / str(code)
                job_dir.mkdir()
                await asyncio.to_thread(write_exit, job_dir / "job_exit.json", code)
                job = executor.attach(99999999, job_dir)
                assert await job.wait() == code
                assert job.phase is not None and job.phase[0] == status
        finally:
            await executor.aclose()

    async def test_a_job_sbatch_refuses_ends_failed_saying_why(
            self, make_service: MakeService, shared_redis: RedisServer, model: tuple[SimulatedModel, str],
            api_key: str) -> None:
        """A job sbatch will not take (an unknown partition) ends failed with sbatch's own words, in its status
        and its log; nothing ran."""
        fake, url = model
        service = await make_service(executor="slurm", cache_url=shared_redis.url, poll_interval=POLL,
                                     partition="no-such-partition")
        job_id = await _post(service, _job(url, client_command(), 2))
        failed = await wait_for_status(service, job_id, "failed")
        message = failed["status_details"]["message"]
        assert message.startswith("Unable to launch the evaluation job") and "sbatch refused the job" in message
        assert "invalid partition" in message.lower(), message
        log = await (await service.get(f"/v1/evaluation/jobs/{job_id}/logs")).text()
        assert "sbatch refused the job" in log
        assert calls(fake) == 0

    async def test_restart_requeue_and_cancel_on_the_cluster(
            self, services: list[Service], model: tuple[SimulatedModel, str], tmp_path: Path,
            shared_redis: RedisServer, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """``jobs serve --executor slurm`` stopped mid-job leaves its jobs to the cluster, which keeps on its disk
        (StateSaveLocation, SlurmdSpoolDir) each job's ticket and neither the key nor the store URL; one of them is
        requeued (``scontrol requeue``) meanwhile. The next start shows each job's true state (the requeued one pending
        with Slurm's reason, the other running, none failed); a cancel ends the running one cancelled through
        ``scancel``, and the requeued one fetches its secrets again from the new service and resumes from the shared
        cache: the model is asked each question once; no file of its directory holds the key, and the service's other
        credentials (HF_TOKEN) reach the node by the ticket too, never Slurm's disk."""
        fake, url = model
        data, go = tmp_path / "svc", tmp_path / "go"
        monkeypatch.setenv("HF_TOKEN", HF_TOKEN)  # a credential of the service's no target names
        # One port for both starts, as a real service has: a requeued job fetches its secrets at the URL it got.
        args = ("--executor", "slurm", "--cache-url", shared_redis.url, "--poll-interval", str(POLL),
                "--port", str(free_port()))
        first = await Service.start(data, tmp_path / "svc.log", *args)
        services.append(first)
        resumed = await first.json("POST", "/v1/evaluation/jobs", _job(url, client_command("--hold", str(go)), 4))
        holding = client_command("--hold", str(tmp_path / "never"), "--print-env", API_KEY_ENV,
                                 "--print-env", "HF_TOKEN")
        held = await first.json("POST", "/v1/evaluation/jobs", _job(url, holding, 2))
        for job in (resumed, held):
            running = await first.wait_for_status(job["id"], "running")
            assert re.fullmatch(r"Job is running \(Slurm job \d+ on \S+\)", running["status_details"]["message"])
        stored_before = await _answers_stored(shared_redis.url)

        async def first_answers_stored() -> bool:  # each job's first answer (the two configs differ)
            return await _answers_stored(shared_redis.url) >= stored_before + 2

        await wait_until(first_answers_stored, what="the first answers stored", seconds=30)
        await first.close()  # SIGTERM: a local job would be stopped and failed; a cluster job goes on
        resumed_id, held_id = await _slurm_id(data, resumed["id"]), await _slurm_id(data, held["id"])
        assert (await _scontrol(held_id))["JobState"] == "RUNNING"
        secrets = [API_KEY.encode(), shared_redis.url.encode(), HF_TOKEN.encode()]
        for slurm_id in (resumed_id, held_id):  # what Slurm keeps of a running job: a ticket, no secret
            saved = await asyncio.to_thread(_saved_environment, slurm_id)
            assert [s for s in secrets if s in saved] == []
            assert b"EVALPROXY_JOBS_TICKET=" in saved and b"EVALPROXY_JOBS_URL=http://127.0.0.1:" in saved
            assert await asyncio.to_thread(_files_holding, _slurm_disk(slurm_id), secrets) == []
        await asyncio.to_thread(subprocess.run, ["scontrol", "requeue", str(resumed_id)], check=True)

        second = await Service.start(data, tmp_path / "svc.log", *args)
        services.append(second)
        assert (await second.json("GET", f"/v1/evaluation/jobs/{held['id']}/status"))["status"] == "running"
        # Requeued, Slurm holds it (its BeginTime) or, on a busy machine, has already started it again (it waits for
        # `go`): either is its true state, never failed.
        pending = await second.wait_for_status(resumed["id"], "pending", "running")
        message = pending["status_details"]["message"]
        assert f"Slurm job {resumed_id}: PENDING" in message or f"(Slurm job {resumed_id} on " in message, pending

        cancelled = await second.json("POST", f"/v1/evaluation/jobs/{held['id']}/cancel")
        assert cancelled["status"] == "cancelled"
        assert (await _scontrol(held_id))["JobState"] == "CANCELLED"  # scancel did it
        async with second.http.get(f"/v1/evaluation/jobs/{held['id']}/logs") as resp:
            log = await resp.text()
        assert "CANCELLED AT" in log  # Slurm's own line, in the output file /logs serves
        assert f"{API_KEY_ENV}=" in log and API_KEY not in log  # the key reached the node, redacted in its log
        assert "HF_TOKEN=" in log and HF_TOKEN not in log  # and so did the service's other credential
        script = await asyncio.to_thread((data / "jobs" / held["id"] / "slurm_job.sh").read_text)
        assert API_KEY not in script and shared_redis.url not in script
        assert "--cache-url-env EVALPROXY_JOBS_CACHE_URL" in script  # the URL reaches evalproxy run by its name
        assert f"--secrets-from {held['id']}" in script

        go.touch()
        # A requeued job may start again two minutes later (its BeginTime): an administrator's "now" saves the wait.
        await asyncio.to_thread(subprocess.run, ["scontrol", "update", f"JobId={resumed_id}", "StartTime=now"],
                                check=True)
        done = await second.wait_for_status(resumed["id"], "completed", "failed")
        assert done["status"] == "completed", done["status_details"]
        assert (await _scontrol(resumed_id))["Restarts"] == "1"
        assert calls(fake) == 4 + 1  # 0 repaid: the requeued run's first answer came from the cache
        job_dir = data / "jobs" / resumed["id"]
        assert await asyncio.to_thread(_files_holding, [job_dir], [API_KEY.encode()]) == []
