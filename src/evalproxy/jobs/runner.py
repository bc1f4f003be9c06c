"""Runs jobs: one ``evalproxy run`` per job, handed to an executor (:mod:`evalproxy.jobs.executors`): a subprocess
of this machine (``local``, at most ``max_concurrent`` at once) or a Slurm batch job (``slurm``, queued by Slurm).

A job's life: ``created`` (recorded) -> ``pending`` (waiting for a slot, or in Slurm's queue) -> ``running`` (its
process is alive) -> ``completed`` (exit 0) | ``failed`` (it could not start, or exited non-zero, or the service
stopped under it; on Slurm, a FAILED/TIMEOUT/OUT_OF_MEMORY/NODE_FAIL state with Slurm's reason) | ``cancelled``
(asked to). Cancelling a running job sends SIGTERM to ``evalproxy run`` (on Slurm, ``scancel``), which forwards it
to the harness and still runs its post-eval hooks; after ``grace_period`` seconds the whole process group gets
SIGKILL.

Each job runs under :mod:`evalproxy.jobs.wrap` in a session of its own, so the service's own signals never reach
it, and it writes its log and, when it ends, its exit status to files of the job directory: nothing of it goes
through the service. If the service dies while jobs run (``kill -9``), the jobs go on; the next start finds them
``running`` in the database and, for each, either its process still alive (it is watched again: progress, cancel,
its end) or its exit file (the job is reported as it ended). A job whose process is gone without an exit file was
killed with the service's machine or by hand: it is failed, saying why. A service stopped normally (SIGTERM) stops
its running local jobs first (hooks run) and marks them failed; jobs on Slurm go on, and the next start reads their
state from Slurm by the id kept in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any

from evalproxy.adapter.core.errors import JobLaunchError, SlurmError
from evalproxy.adapter.core.redact import secret_env
from evalproxy.jobs import launch
from evalproxy.jobs.executors import make_executor
from evalproxy.jobs.executors.base import Executor, JobProcess
from evalproxy.jobs.executors.local import LocalExecutor, Reattached, own_process
from evalproxy.jobs.executors.slurm import SlurmExecutor, SlurmJob
from evalproxy.jobs.models import now
from evalproxy.jobs.settings import Settings
from evalproxy.jobs.tickets import CACHE_URL_ENV, SERVICE_URL_ENV, TICKET_ENV, new_ticket, ticket_hash
from evalproxy.storage.jobs_db import JobsDB

log = logging.getLogger("evalproxy.jobs")

MSG_PENDING = "Job is pending"
MSG_RUNNING = "Job is running"
MSG_COMPLETED = "Job completed successfully"
MSG_LAUNCH_FAILED = ("Unable to launch the evaluation job because there is a problem in the target, config, or "
                     "environment")
MSG_CANCELLED = "Job was cancelled"
MSG_INTERRUPTED = "Job failed because the evaluation service stopped while it was running"

ACTIVE = ("created", "pending", "running")
FINAL = ("completed", "failed", "cancelled")


def status_details(message: str | None, progress: float | None = None) -> dict[str, Any]:
    return {"message": message, "task_status": {}, "progress": progress}


def download_url(job_id: str) -> str:
    return f"/v1/evaluation/jobs/{job_id}/download"


def _limit(job: dict[str, Any]) -> int | None:
    value = job["config"]["params"].get("limit_samples")
    return value if isinstance(value, int) and value > 0 else None


class JobRunner:
    def __init__(self, db: JobsDB, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.executor: Executor = make_executor(settings)
        self._local = LocalExecutor()
        self._watcher: SlurmExecutor | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, JobProcess] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False
        self.service_url = ServiceURL(settings.public_url)

    def _executor_of(self, proc: JobProcess) -> Executor:
        return proc.executor if isinstance(proc, SlurmJob) else self._local

    def _slurm(self) -> SlurmExecutor:
        """The executor that watches jobs submitted to Slurm: the service's own, or one with Slurm's defaults when
        the service now runs locally."""
        if isinstance(self.executor, SlurmExecutor):
            return self.executor
        if self._watcher is None:
            self._watcher = SlurmExecutor(poll=self.settings.poll_interval)
        return self._watcher

    # lifecycle

    async def recover(self) -> None:
        """After a restart: a job still running is watched again, one that ended while the service was away is
        reported as it ended; a job submitted to Slurm is watched by its Slurm id; the queue is submitted again."""
        for job, pid, slurm_id in await asyncio.to_thread(self.db.jobs_in, ["running"]):
            job_id = job["id"]
            if slurm_id is not None:
                await self._recover_submitted(job, slurm_id)
                continue
            if pid is not None and await asyncio.to_thread(own_process, pid, job_id):
                log.info("job %s: its process %d outlived the previous service: watching it again", job_id, pid)
                proc = Reattached(pid, job_id, self.settings.jobs_dir / job_id, self.settings.poll_interval)
                self._track(job_id, self._reattach(job, proc))
                continue
            code = await asyncio.to_thread(launch.read_exit, self.settings.jobs_dir / job_id)
            await asyncio.to_thread(self.db.set_pid, job_id, None)
            if code is None:
                await self._set(job_id, "failed", MSG_INTERRUPTED, progress=job["status_details"].get("progress"))
            else:
                log.info("job %s: ended with status %d while the service was away", job_id, code)
                await self._conclude(job_id, code, job["status_details"].get("progress"), _limit(job))
        for job, _, slurm_id in await asyncio.to_thread(self.db.jobs_in, ["created", "pending"]):
            if slurm_id is not None:
                await self._recover_submitted(job, slurm_id)
            else:
                self.submit(job["id"])

    async def _recover_submitted(self, job: dict[str, Any], slurm_id: int) -> None:
        """Watch a job the previous service submitted to Slurm again, in the state Slurm gives it now."""
        job_id = job["id"]
        proc = self._slurm().attach(slurm_id, self.settings.jobs_dir / job_id)
        try:
            state = await proc.refresh()
            log.info("job %s: Slurm job %d is %s: watching it again", job_id, slurm_id, state.state)
        except SlurmError as exc:  # the poller asks again
            log.warning("job %s: Slurm job %d: %s", job_id, slurm_id, exc)
        self._track(job_id, self._reattach(job, proc))

    async def aclose(self) -> None:
        """Stop: queued jobs stay queued for the next start; running jobs are stopped and marked failed, except on
        a cluster, where they go on and the next start watches them again."""
        self._stopping = True
        stopping: list[JobProcess] = []
        for job_id, task in list(self._tasks.items()):
            proc = self._procs.get(job_id)
            if proc is None or self._executor_of(proc).outlives_service:
                task.cancel()
            else:
                stopping.append(proc)
        await asyncio.gather(*(self._executor_of(p).stop(p, self.settings.grace_period) for p in stopping))
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        for executor in {self.executor, *([self._watcher] if self._watcher else [])}:
            await executor.aclose()

    def submit(self, job_id: str) -> None:
        self._track(job_id, self._run(job_id))

    def _track(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"job {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job and wait until it has ended (its hooks included)."""
        task = self._tasks.get(job_id)
        if task is None:
            return
        self._cancel_requested.add(job_id)
        proc = self._procs.get(job_id)
        if proc is None:
            task.cancel()
        else:
            await self._executor_of(proc).stop(proc, self.settings.grace_period)
        await asyncio.gather(task, return_exceptions=True)

    # one job

    async def _run(self, job_id: str) -> None:
        try:
            await self._set(job_id, "pending", MSG_PENDING)
            # A cluster queues its jobs itself: the runner holds no slot for them.
            async with contextlib.nullcontext() if self.executor.queues else self._slots:
                await self._execute(job_id)
        except asyncio.CancelledError:
            if job_id in self._cancel_requested:
                await self._set(job_id, "cancelled", MSG_CANCELLED)
            # otherwise the service is stopping: the job stays pending and runs after the next start
        except Exception:  # a bug here must not leave the job "running" for ever
            log.exception("job %s: the service failed to run it", job_id)
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
        finally:
            self._cancel_requested.discard(job_id)

    async def _execute(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.db.get_job, job_id)
        if job is None:
            return
        job_dir = self.settings.jobs_dir / job_id
        limit = _limit(job)
        try:
            logfile = await asyncio.to_thread(_open_log, job_dir / launch.LOG_FILE)
        except OSError as exc:
            log.error("job %s: cannot prepare %s: %s", job_id, job_dir, exc)
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
            return
        try:
            proc = await self._start(job_id, job, job_dir, logfile)
        finally:
            await asyncio.to_thread(logfile.close)
        if proc is None:
            return
        # "running" once its process is alive and recorded: a service killed right after saying so finds it again.
        status, message = getattr(proc, "phase", None) or ("running", MSG_RUNNING)
        await self._set(job_id, status, message, progress=0.0 if limit else None,
                        output_files_url=download_url(job_id))
        log.info("job %s: %s as %s %d", job_id, status, "Slurm job" if isinstance(proc, SlurmJob) else "process",
                 proc.pid)
        await self._follow(job_id, proc, limit)

    async def _start(self, job_id: str, job: dict[str, Any], job_dir: Path, logfile: IO[str]) -> JobProcess | None:
        """Prepare and launch the job; None when it could not start (it is then failed, and its log says why)."""
        key_name = job["target"]["api_endpoint"].get("api_key_name")
        try:
            argv = await asyncio.to_thread(prepare, self.settings, self.executor, job_dir, job)
            if key_name and not os.environ.get(key_name):
                raise JobLaunchError(f"the target's api_key_name is {key_name}, but the service's environment has "
                                     "no such variable")
            env = job_env(self.settings.token, self.settings, job)
            if self.executor.fetches_secrets:  # on a cluster: no secret in its environment, a ticket instead
                env = await ticketed_env(self.db, self.settings, job, env, await self.service_url.get())
            proc = await self.executor.launch(job_id, job_dir, argv, logfile, env)
            self._procs[job_id] = proc  # before any other await: a stopping service must find it
            await asyncio.to_thread(self.executor.remember, self.db, job_id, proc)  # and a restarted one too
            return proc
        except (OSError, JobLaunchError) as exc:
            await asyncio.to_thread(_write, logfile, f"evalproxy jobs: {exc}\n")
            log.error("job %s: %s", job_id, exc)
            message = f"{MSG_LAUNCH_FAILED}: {exc}" if self.executor.distributed else MSG_LAUNCH_FAILED
            await self._set(job_id, "failed", message, output_files_url=download_url(job_id))
            return None

    async def _reattach(self, job: dict[str, Any], proc: JobProcess) -> None:
        """Watch a job that outlived the previous service, in a slot when one is free (it runs anyway)."""
        job_id = job["id"]
        slot = not self._executor_of(proc).queues and not self._slots.locked()
        if slot:
            await self._slots.acquire()
        try:
            await self._follow(job_id, proc, _limit(job))
        except asyncio.CancelledError:
            if job_id in self._cancel_requested:
                await self._set(job_id, "cancelled", MSG_CANCELLED)
        finally:
            self._cancel_requested.discard(job_id)
            if slot:
                self._slots.release()

    async def _follow(self, job_id: str, proc: JobProcess, limit: int | None) -> None:
        """Watch the job's process until it ends, then record how it ended."""
        self._procs[job_id] = proc
        try:
            progress = await self._watch(job_id, proc, self.settings.jobs_dir / job_id, limit)
        finally:
            self._procs.pop(job_id, None)
            await asyncio.to_thread(self.db.set_pid, job_id, None)
        written = await asyncio.to_thread(launch.read_exit, self.settings.jobs_dir / job_id)
        code = written if written is not None else proc.returncode
        phase = getattr(proc, "phase", None)  # a cluster's own word on how the job ended
        log.info("job %s: exited with status %s%s", job_id, code, f" ({phase[1]})" if phase else "")
        if job_id in self._cancel_requested:
            await self._set(job_id, "cancelled", MSG_CANCELLED, progress=progress)
        elif self._stopping and not self._executor_of(proc).outlives_service:
            await self._set(job_id, "failed", MSG_INTERRUPTED, progress=progress)
        elif phase is not None and phase[0] != "completed":
            await self._set(job_id, phase[0], phase[1], progress=progress)
        else:
            await self._conclude(job_id, 0 if phase is not None else code, progress, limit)

    async def _conclude(self, job_id: str, code: int | None, progress: float | None, limit: int | None) -> None:
        """Record a job that ended by itself with status ``code``: completed (and its results) or failed."""
        if code != 0:
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED, progress=progress)
            return
        results = await asyncio.to_thread(launch.read_results, self.settings.jobs_dir / job_id)
        changes: dict[str, Any] = {}
        if results is not None:
            await asyncio.to_thread(self.db.set_results, job_id, results)
            changes["result"] = "evaluation_result-" + job_id.removeprefix("eval-")
        else:
            log.warning("job %s: completed without a results file", job_id)
        await self._set(job_id, "completed", MSG_COMPLETED, progress=100.0 if limit else None, **changes)

    async def _watch(self, job_id: str, proc: JobProcess, job_dir: Path,
                     limit: int | None) -> float | None:
        """Wait for the process, updating progress from the proxy's statistics file (and the status from the
        cluster's state); the last progress."""
        waiter = asyncio.ensure_future(proc.wait())
        progress: float | None = 0.0 if limit else None
        shown = getattr(proc, "phase", None)
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self.settings.poll_interval)
                phase = getattr(proc, "phase", None)
                changed = phase != shown
                shown = phase
                if limit:
                    count = await asyncio.to_thread(launch.answered, job_dir)
                    if count is not None and min(100.0, 100.0 * count / limit) != progress:
                        progress, changed = min(100.0, 100.0 * count / limit), True
                if changed and not done and job_id not in self._cancel_requested:
                    status, message = shown or ("running", MSG_RUNNING)
                    await self._set(job_id, status, message, progress=progress)
                if done:
                    return progress
        finally:
            if not waiter.done():
                waiter.cancel()

    async def _set(self, job_id: str, status: str, message: str, *, progress: float | None = None,
                   **changes: Any) -> None:
        await asyncio.to_thread(self.db.update_job, job_id, {
            "status": status, "status_details": status_details(message, progress), "updated_at": now(), **changes,
        })


def prepare(settings: Settings, executor: Executor, job_dir: Path, job: dict[str, Any]) -> list[str]:
    """Write the job's files; its argv. On a cluster, a disk cache on a shared filesystem is refused."""
    target, config = job["target"], job["config"]
    url = launch.store_url(target, config, settings.cache_url)
    argv = launch.prepare(job_dir, target, config, settings.cache_root, settings.python, url)
    if executor.distributed:
        disk = launch.disk_cache(target, config, settings.cache_root, url)
        if disk is not None:
            launch.check_cache_filesystem(disk)
    return argv


URL_WAIT = 30.0
"""Seconds a cluster job's launch waits for the service's own URL (known once ``jobs serve`` has bound)."""


class ServiceURL:
    """The URL jobs on a cluster reach the service at: ``public_url``, else the address it is bound to, known once
    ``jobs serve`` has bound it (:meth:`set`); a job launched before waits for it."""

    def __init__(self, public_url: str | None) -> None:
        self._url = public_url
        self._known = asyncio.Event()
        if public_url:
            self._known.set()

    def set(self, bound: str) -> None:
        """The URL the service was bound to (``public_url``, when given, stays the one)."""
        self._url = self._url or bound
        self._known.set()

    async def get(self) -> str:
        try:
            await asyncio.wait_for(self._known.wait(), URL_WAIT)
        except TimeoutError:
            raise JobLaunchError("the service does not know the URL its jobs reach it at (it was not bound within "
                                 f"{URL_WAIT:.0f} s): give jobs serve --public-url") from None
        assert self._url is not None  # set with _known
        return self._url


NODE_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
                      "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "SLURM_CONF"})
NODE_ENV_PREFIXES = ("LC_", "SBATCH_")
"""The variables a cluster job is submitted with: what starts the job's wrapper, and what tells ``sbatch`` where its
cluster is and its defaults (``SLURM_CONF``, ``SBATCH_ACCOUNT``...). The rest of its environment, secrets and all,
it fetches with its ticket (:func:`held_back`)."""


def _to_node(name: str, value: str, secret_values: set[str]) -> bool:
    return ((name in NODE_ENV or name.startswith(NODE_ENV_PREFIXES)) and not secret_env(name, value)
            and value not in secret_values)


async def ticketed_env(db: JobsDB, settings: Settings, job: dict[str, Any], env: dict[str, str],
                       url: str) -> dict[str, str]:
    """What a cluster job is submitted with, which slurmctld keeps on its disk: the few variables of ``env`` that
    start its wrapper (:data:`NODE_ENV`, never one holding a secret), a new ticket to fetch the rest by and the
    service's URL; the ticket's hash is recorded first, so the job finds it however fast it starts."""
    ticket = new_ticket()
    await asyncio.to_thread(db.set_ticket_hash, job["id"], ticket_hash(ticket))
    values = set(job_secrets(settings, job).values())
    kept = {k: v for k, v in env.items() if _to_node(k, v, values)}
    return {**kept, TICKET_ENV: ticket, SERVICE_URL_ENV: url}


def held_back(settings: Settings, job: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The environment a cluster job fetches with its ticket beside its ``secrets``: what a local job gets
    (:func:`job_env`) but the variables it was submitted with and the secrets."""
    values = set(secrets.values())
    return {k: v for k, v in job_env(settings.token, settings, job).items()
            if k not in secrets and v not in values and not _to_node(k, v, values)}


def job_secrets(settings: Settings, job: dict[str, Any]) -> dict[str, str]:
    """The secrets a job's ``evalproxy run`` needs in its environment: the upstream key (the variable the target's
    ``api_key_name`` names, from the service's environment), the store URL (:data:`CACHE_URL_ENV`), when it has
    them, and every other credential of the service's environment (:func:`~evalproxy.adapter.core.redact.secret_env`:
    ``HF_TOKEN``, ``WANDB_API_KEY``, a URL with a password...) but the service's own token, which a harness may need
    and a cluster must not keep on its disk. Worked out again on every call: nothing of them is kept."""
    out = {k: v for k, v in os.environ.items()
           if secret_env(k, v) and not (settings.token and v == settings.token)}
    key_name = job["target"]["api_endpoint"].get("api_key_name")
    if key_name and os.environ.get(key_name):
        out[key_name] = os.environ[key_name]
    url = launch.store_url(job["target"], job["config"], settings.cache_url)
    if url:
        out[CACHE_URL_ENV] = url
    return out


def job_env(token: str | None, settings: Settings | None = None, job: dict[str, Any] | None = None
            ) -> dict[str, str]:
    """The service's environment without its own token (a harness has no business calling the service), with a
    relative PYTHONPATH made absolute (the job runs in its own directory but must import the same evalproxy as the
    service), and the job's store URL in :data:`CACHE_URL_ENV`, which its ``evalproxy run`` is told by name
    (``--cache-url-env``: never on a command line; a cluster's job fetches it instead, :func:`ticketed_env`)."""
    env = {k: v for k, v in os.environ.items() if not (token and v == token)}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p for p in env["PYTHONPATH"].split(os.pathsep))
    if settings is not None and job is not None:
        env.update({k: v for k, v in job_secrets(settings, job).items() if k == CACHE_URL_ENV})
    return env


def _open_log(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8", errors="replace")


def _write(sink: IO[str], text: str) -> None:
    sink.write(text)
    sink.flush()
