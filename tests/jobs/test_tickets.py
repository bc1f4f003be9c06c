"""A job's ticket: ``POST /v1/evaluation/jobs/{id}/secrets`` on a real service, and the job's wrapper fetching its
secrets with it before its command runs (a real ``python -m evalproxy.jobs.wrap`` process)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from evalproxy.adapter.core.redact import secret_env
from evalproxy.jobs import launch
from evalproxy.jobs.app import DB, SETTINGS
from evalproxy.jobs.models import new_job_id, now
from evalproxy.jobs.runner import NODE_ENV, ticketed_env
from evalproxy.jobs.tickets import (
    CACHE_URL_ENV,
    SERVICE_URL_ENV,
    TICKET_ENV,
    FetchError,
    fetch_secrets,
    new_ticket,
    ticket_hash,
)
from evalproxy.jobs.wrap import FETCH_FAILED
from evalproxy.storage.jobs_db import JobsDB
from tests.jobs.conftest import API_KEY, API_KEY_ENV, TOKEN, MakeService

STORE = "redis://:store-password-42@cache.cluster:6379/0"
HF_ENV, HF_TOKEN = "HF_TOKEN", "hf_dataset-download-secret-7"
"""Another credential of the service's environment, which no target names: a harness may need it."""


class Ticketed:
    """A service (local executor: nothing runs by itself) holding jobs added straight to its database, each with a
    ticket as the runner gives a job on a cluster."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.db: JobsDB = client.server.app[DB]

    async def add(self, status: str = "pending") -> tuple[str, str]:
        """(job id, ticket) of a new job in ``status``."""
        job_id, ticket, stamp = new_job_id(), new_ticket(), now()
        job = {"id": job_id, "namespace": "default", "status": status, "created_at": stamp, "updated_at": stamp,
               "target": {"api_endpoint": {"url": "http://model/v1", "model_id": "m", "type": "chat",
                                           "api_key_name": API_KEY_ENV, "adapter_config": None}},
               "config": {"command": ["harness"], "params": {}}}
        await asyncio.to_thread(self.db.add_job, job, target_ref=None, config_ref=None)
        await asyncio.to_thread(self.db.set_ticket_hash, job_id, ticket_hash(ticket))
        return job_id, ticket

    async def set_status(self, job_id: str, status: str) -> None:
        await asyncio.to_thread(self.db.update_job, job_id, {"status": status, "updated_at": now()})

    async def fetch(self, job_id: str, credential: str | None, **headers: str) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {credential}"} if credential is not None else {}
        resp = await self.client.post(f"/v1/evaluation/jobs/{job_id}/secrets", data=b"{}",
                                      headers={"Content-Type": "application/json", **sent, **headers})
        return resp.status, await resp.json()

    def expected(self) -> dict[str, str]:
        target = {"api_endpoint": {"url": "http://model/v1", "model_id": "m", "type": "chat",
                                   "api_key_name": API_KEY_ENV, "adapter_config": None}}
        url = launch.store_url(target, {"command": ["harness"], "params": {}}, STORE)
        assert url is not None and url.startswith(STORE)
        return {API_KEY_ENV: API_KEY, CACHE_URL_ENV: url, HF_ENV: HF_TOKEN}


@pytest.fixture
async def ticketed(make_service: MakeService, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Ticketed:
    for name, value in list(os.environ.items()):  # the service's credentials: the key and HF_TOKEN, no others
        if secret_env(name, value) and name != API_KEY_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv(HF_ENV, HF_TOKEN)
    monkeypatch.setenv("HF_HOME", "/data/hf")
    # send_token=False: the ticket is the only credential these calls carry
    return Ticketed(await make_service(cache_url=STORE, send_token=False))


class TestSecretsEndpoint:
    async def test_the_ticket_fetches_its_jobs_secrets_and_only_its_hash_is_kept(
            self, ticketed: Ticketed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """A pending job's ticket, without the service's token, gets the key, the store URL and HF_TOKEN, and the
        rest of the job's environment apart, again while the job runs; jobs.db holds the ticket's SHA-256 and never
        the ticket, and the log says who fetched what, without the ticket or a secret."""
        job_id, ticket = await ticketed.add("pending")
        with caplog.at_level(logging.INFO, logger="evalproxy.jobs"):
            status, sent = await ticketed.fetch(job_id, ticket)
            assert (status, sent["env"]) == (200, ticketed.expected())
            assert sent["rest"]["HF_HOME"] == "/data/hf" and "PATH" not in sent["rest"]
            assert not set(sent["rest"].values()) & set(ticketed.expected().values())
            await ticketed.set_status(job_id, "running")
            assert await ticketed.fetch(job_id, ticket) == (200, sent)
        with sqlite3.connect(tmp_path / "data" / "jobs.db") as conn:
            stored = conn.execute("SELECT ticket_hash FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        assert stored == hashlib.sha256(ticket.encode()).hexdigest()
        on_disk = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("jobs.db*"))
        assert ticket.encode() not in on_disk and API_KEY.encode() not in on_disk
        fetched = [r.getMessage() for r in caplog.records if "fetched with its ticket" in r.getMessage()]
        assert len(fetched) == 2 and f"({CACHE_URL_ENV}, {API_KEY_ENV}, {HF_ENV})" in fetched[0]
        assert not any(s in caplog.text for s in (ticket, API_KEY, "store-password-42", HF_TOKEN))

    async def test_a_cluster_job_is_submitted_with_no_credential_of_the_service(self, ticketed: Ticketed) -> None:
        """The environment a job goes to the cluster with (which slurmctld keeps on its disk) holds the ticket, the
        service's URL and the few variables that start Python, none of the service's credentials (the key, the
        store URL, HF_TOKEN, under their names or any other) and no other variable: one holding a secret under a
        name nobody would take for one stays off the cluster's disk."""
        job_id, _ = await ticketed.add("pending")
        job = await asyncio.to_thread(ticketed.db.get_job, job_id)
        env = {**os.environ, "COPY_OF_THE_KEY": API_KEY, "MODEL_CREDS": "c2VjcmV0LXZhbHVl", "HF_HOME": "/data/hf",
               "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONPATH": API_KEY, "SBATCH_ACCOUNT": "proj-1"}
        sent = await ticketed_env(ticketed.db, ticketed.client.server.app[SETTINGS], job, env, "http://svc:1")
        assert not [k for k, v in sent.items() if v in (API_KEY, HF_TOKEN, ticketed.expected()[CACHE_URL_ENV])]
        assert set(sent) - {"LC_ALL", "SBATCH_ACCOUNT", SERVICE_URL_ENV, TICKET_ENV} <= NODE_ENV
        assert sent["PATH"] == "/usr/bin:/bin" and sent["LC_ALL"] == "C.UTF-8" and "PYTHONPATH" not in sent
        assert sent["SBATCH_ACCOUNT"] == "proj-1"  # sbatch's own defaults stay
        assert sent[SERVICE_URL_ENV] == "http://svc:1" and len(sent[TICKET_ENV]) >= 32

    @pytest.mark.parametrize(("case", "status", "words"), [
        ("no ticket", 401, "the job's ticket is required"),
        ("a wrong ticket", 403, "this ticket is not job"),
        ("the service's token", 403, "this ticket is not job"),
        ("another job's ticket", 403, "this ticket is not job"),
        ("an unknown job", 403, "this ticket is not job"),
        ("a completed job", 403, "is completed: its ticket is no longer accepted"),
        ("a cancelled job", 403, "is cancelled: its ticket is no longer accepted"),
        ("a job run locally (no ticket)", 403, "this ticket is not job"),
    ])
    async def test_anything_but_a_live_jobs_own_ticket_is_refused(
            self, ticketed: Ticketed, caplog: pytest.LogCaptureFixture, case: str, status: int, words: str) -> None:
        """A missing ticket is a 401; a wrong one, the service's token, another job's ticket, a ticket for an
        unknown job, an ended job's own ticket and any ticket for a job that has none are 403s; no secret is sent
        and the refusal is logged."""
        job_id, ticket = await ticketed.add("running")
        other_id, other_ticket = await ticketed.add("running")
        asked, given = job_id, ticket
        if case == "no ticket":
            given = None
        elif case == "a wrong ticket":
            given = new_ticket()
        elif case == "the service's token":
            given = TOKEN
        elif case == "another job's ticket":
            given = other_ticket
        elif case == "an unknown job":
            asked = new_job_id()
        elif case.startswith("a completed") or case.startswith("a cancelled"):
            await ticketed.set_status(job_id, case.split()[1])
        else:
            await asyncio.to_thread(ticketed.db.set_ticket_hash, job_id, None)
        with caplog.at_level(logging.INFO, logger="evalproxy.jobs"):
            got, body = await ticketed.fetch(asked, given)
        assert got == status and words in body["detail"], body
        assert API_KEY not in orjson.dumps(body).decode()
        assert f"job {asked}: secrets refused" in caplog.text and ticket not in caplog.text
        assert (await ticketed.fetch(other_id, other_ticket))[0] == 200  # the other job's own ticket still works

    async def test_a_service_without_the_key_sends_nothing(self, ticketed: Ticketed,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """A service restarted without the key's variable answers a live job's ticket with a 409 naming the
        variable, never with secrets lacking the key (the job would run without it)."""
        job_id, ticket = await ticketed.add("running")
        monkeypatch.delenv(API_KEY_ENV)
        status, body = await ticketed.fetch(job_id, ticket)
        assert status == 409 and f"has no {API_KEY_ENV}" in body["detail"] and "env" not in body

    async def test_no_other_route_takes_a_ticket_and_the_guard_still_applies(self, ticketed: Ticketed) -> None:
        """A ticket opens no other route (401 as without a token); the secrets route keeps the guard's rules: a
        foreign Host is a 421, another site's page a 403, a body that is not JSON a 415."""
        job_id, ticket = await ticketed.add("running")
        bearer = {"Authorization": f"Bearer {ticket}"}
        for path in ("/v1/evaluation/jobs", f"/v1/evaluation/jobs/{job_id}", f"/v1/evaluation/jobs/{job_id}/logs"):
            assert (await ticketed.client.get(path, headers=bearer)).status == 401
        assert (await ticketed.client.post(f"/v1/evaluation/jobs/{job_id}/cancel", headers=bearer)).status == 401
        assert (await ticketed.fetch(job_id, ticket, Host="evil.example"))[0] == 421
        assert (await ticketed.fetch(job_id, ticket, Origin="https://evil.example"))[0] == 403
        assert (await ticketed.fetch(job_id, ticket, **{"Content-Type": "text/plain"}))[0] == 415


async def _wrap(tmp_path: Path, env: dict[str, str], job_id: str, code: str) -> tuple[int, str, dict[str, Any]]:
    """Run the job's wrapper with ``--secrets-from`` around ``python -c code``: (status, log, exit file)."""
    log, exit_file = tmp_path / "job.log", tmp_path / "job_exit.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalproxy.jobs.wrap", "--log", str(log), "--exit-file", str(exit_file),
        "--secret-env", API_KEY_ENV, "--secrets-from", job_id, "--", sys.executable, "-c", code, env=env)
    status = await proc.wait()
    return status, await asyncio.to_thread(log.read_text), orjson.loads(await asyncio.to_thread(exit_file.read_bytes))


CHILD = f"""import os, pathlib, sys
pathlib.Path("ran").touch()
print("key", os.environ.get("{API_KEY_ENV}") == "{API_KEY}", "ticket", "{TICKET_ENV}" in os.environ,
      "url", "{SERVICE_URL_ENV}" in os.environ)
print("store", os.environ.get("{CACHE_URL_ENV}", "").startswith("redis://"), len(sys.argv))
print("hf", os.environ.get("{HF_ENV}") == "{HF_TOKEN}", os.environ.get("HF_HOME"), os.environ.get("GPUS_TEST"))
print("printed:", os.environ["{API_KEY_ENV}"], os.environ["{HF_ENV}"])
"""


class TestWrapperFetch:
    async def test_the_wrapper_gives_its_command_the_secrets_and_not_the_ticket(
            self, ticketed: Ticketed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no secret in its own environment, the wrapper fetches them with the ticket: the command gets the
        key, HF_TOKEN and the store URL in its environment (none as an argument), and the rest of the job's
        environment (HF_HOME) where the node set nothing itself (its GPUs stay its own), never the ticket; its log
        redacts the key and the token."""
        job_id, ticket = await ticketed.add("running")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("GPUS_TEST", "0,1")  # the service's own
        env = {k: v for k, v in os.environ.items() if not secret_env(k, v) and k != "HF_HOME"}
        env.update({TICKET_ENV: ticket, SERVICE_URL_ENV: str(ticketed.client.make_url("")), "GPUS_TEST": "3"})
        status, log, exited = await _wrap(tmp_path, env, job_id, CHILD)
        assert (status, exited) == (0, {"returncode": 0}), log
        assert "key True ticket False url False" in log and "store True 1" in log and "hf True /data/hf 3" in log
        assert "printed:" in log and API_KEY not in log and HF_TOKEN not in log

    @pytest.mark.parametrize("why", ["refused", "ended"])
    async def test_a_refused_fetch_ends_the_job_before_its_command_runs(
            self, ticketed: Ticketed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
        """A wrong ticket, or a job that has ended: the wrapper exits FETCH_FAILED with the service's refusal in
        its log and exit file, and the command never runs."""
        job_id, ticket = await ticketed.add("running")
        if why == "ended":
            await ticketed.set_status(job_id, "failed")
        monkeypatch.chdir(tmp_path)
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        env.update({TICKET_ENV: ticket if why == "ended" else new_ticket(),
                    SERVICE_URL_ENV: str(ticketed.client.make_url(""))})
        status, log, exited = await _wrap(tmp_path, env, job_id, CHILD)
        assert status == FETCH_FAILED and exited["returncode"] == FETCH_FAILED
        words = "is failed: its ticket is no longer accepted" if why == "ended" else "this ticket is not job"
        assert "the job could not fetch its secrets: the jobs service at" in log and "refused the job's ticket (403" \
            in log and words in log, log
        assert exited["reason"] in log
        assert not (tmp_path / "ran").exists()


def test_an_unreachable_service_is_named_in_the_error(unused_tcp_port: int) -> None:
    """Nothing listening at the service's URL: a FetchError saying the service is unreachable and how long it was
    tried."""
    with pytest.raises(FetchError, match=r"jobs service at http://127\.0\.0\.1:\d+ is unreachable .*tried for 0 s"):
        fetch_secrets(f"http://127.0.0.1:{unused_tcp_port}", "eval-X", new_ticket(), wait=0)
