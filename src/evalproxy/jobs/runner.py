"""Runs jobs: a queue bounded by ``max_concurrent``, one ``evalproxy run`` subprocess per job, cancel and recovery.

A job's life: ``created`` (recorded) -> ``pending`` (waiting for a slot) -> ``running`` (its subprocess is alive)
-> ``completed`` (exit 0) | ``failed`` (it could not start, or exited non-zero, or the service stopped under it) |
``cancelled`` (asked to). Cancelling a running job sends SIGTERM to ``evalproxy run``, which forwards it to the
harness and still runs its post-eval hooks; after ``grace_period`` seconds the whole process group gets SIGKILL.

Each subprocess starts a session of its own, so the service's own signals never reach it. If the service dies
while jobs run, the next start finds them ``running`` in the database: it asks any process still alive to stop
(hooks run) and marks the job failed, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import IO, Any

from evalproxy.adapter.core.redact import redact_text
from evalproxy.jobs import launch
from evalproxy.jobs.models import now
from evalproxy.jobs.settings import Settings
from evalproxy.jobs.store import JobsDB

log = logging.getLogger("evalproxy.jobs")

MSG_PENDING = "Job is pending"
MSG_RUNNING = "Job is running"
MSG_COMPLETED = "Job completed successfully"
MSG_LAUNCH_FAILED = ("Unable to launch the evaluation job because there is a problem in the target, config, or "
                     "environment")
MSG_CANCELLED = "Job was cancelled"
MSG_INTERRUPTED = "Job failed because the evaluation service stopped while it was running"

PUMP_DRAIN_SECONDS = 5.0

ACTIVE = ("created", "pending", "running")
FINAL = ("completed", "failed", "cancelled")


def status_details(message: str | None, progress: float | None = None) -> dict[str, Any]:
    return {"message": message, "task_status": {}, "progress": progress}


def download_url(job_id: str) -> str:
    return f"/v1/evaluation/jobs/{job_id}/download"


def _limit(job: dict[str, Any]) -> int | None:
    value = job["config"]["params"].get("limit_samples")
    return value if isinstance(value, int) and value > 0 else None


def _own_process(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still this job's ``evalproxy run`` (its command line names the job's directory)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return job_id.encode() in cmdline and b"evalproxy" in cmdline


class JobRunner:
    def __init__(self, db: JobsDB, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False

    # lifecycle

    async def recover(self) -> None:
        """After a restart: jobs that were running failed with the service; the queue is submitted again."""
        for job, pid in await asyncio.to_thread(self.db.jobs_in, ["running"]):
            if pid is not None and await asyncio.to_thread(_own_process, pid, job["id"]):
                log.warning("job %s: its process %d outlived the service; asking it to stop", job["id"], pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
            await self._set(job["id"], "failed", MSG_INTERRUPTED, progress=job["status_details"].get("progress"))
            await asyncio.to_thread(self.db.set_pid, job["id"], None)
        for job, _ in await asyncio.to_thread(self.db.jobs_in, ["created", "pending"]):
            self.submit(job["id"])

    async def aclose(self) -> None:
        """Stop: queued jobs stay queued for the next start; running jobs are stopped and marked failed."""
        self._stopping = True
        for job_id, task in list(self._tasks.items()):
            if job_id not in self._procs:
                task.cancel()
        await asyncio.gather(*(self._terminate(p) for p in list(self._procs.values())))
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def submit(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id), name=f"job {job_id}")
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
            await self._terminate(proc)
        await asyncio.gather(task, return_exceptions=True)

    # one job

    async def _run(self, job_id: str) -> None:
        try:
            await self._set(job_id, "pending", MSG_PENDING)
            async with self._slots:
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
        await self._set(job_id, "running", MSG_RUNNING, progress=0.0 if limit else None,
                        output_files_url=download_url(job_id))
        try:
            argv = await asyncio.to_thread(launch.prepare, job_dir, job["target"], job["config"],
                                           self.settings.cache_root, self.settings.python)
            logfile = await asyncio.to_thread(_open_log, job_dir / launch.LOG_FILE)
        except OSError as exc:
            log.error("job %s: cannot prepare %s: %s", job_id, job_dir, exc)
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
            return
        secrets = self._secrets(job)
        key_name = job["target"]["api_endpoint"].get("api_key_name")
        try:
            if key_name and not os.environ.get(key_name):
                await asyncio.to_thread(_write, logfile, f"evalproxy jobs: the target's api_key_name is {key_name}, "
                                        "but the service's environment has no such variable\n")
                await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
                return
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, cwd=job_dir, start_new_session=True, env=self._job_env(),
                )
            except OSError as exc:
                await asyncio.to_thread(_write, logfile, f"evalproxy jobs: cannot start the job: {exc}\n")
                await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
                return
            self._procs[job_id] = proc
            await asyncio.to_thread(self.db.set_pid, job_id, proc.pid)
            log.info("job %s: running as process %d", job_id, proc.pid)
            assert proc.stdout is not None  # asked for above
            pump = asyncio.create_task(_copy_redacted(proc.stdout, logfile, secrets))
            try:
                progress = await self._watch(job_id, proc, job_dir, limit)
            finally:
                self._procs.pop(job_id, None)
                await asyncio.to_thread(self.db.set_pid, job_id, None)
                # A daemon the harness left behind may hold the pipe open: its later output is not waited for.
                _, unfinished = await asyncio.wait({pump}, timeout=PUMP_DRAIN_SECONDS)
                for task in unfinished:
                    task.cancel()
        finally:
            await asyncio.to_thread(logfile.close)
        code = proc.returncode
        log.info("job %s: exited with status %s", job_id, code)
        if job_id in self._cancel_requested:
            await self._set(job_id, "cancelled", MSG_CANCELLED, progress=progress)
        elif self._stopping:
            await self._set(job_id, "failed", MSG_INTERRUPTED, progress=progress)
        elif code != 0:
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED, progress=progress)
        else:
            results = await asyncio.to_thread(launch.read_results, job_dir)
            changes: dict[str, Any] = {}
            if results is not None:
                await asyncio.to_thread(self.db.set_results, job_id, results)
                changes["result"] = "evaluation_result-" + job_id.removeprefix("eval-")
            else:
                log.warning("job %s: completed without a results file", job_id)
            await self._set(job_id, "completed", MSG_COMPLETED, progress=100.0 if limit else None, **changes)

    async def _watch(self, job_id: str, proc: asyncio.subprocess.Process, job_dir: Path,
                     limit: int | None) -> float | None:
        """Wait for the process, updating progress from the proxy's statistics file; the last progress."""
        waiter = asyncio.ensure_future(proc.wait())
        progress: float | None = 0.0 if limit else None
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=self.settings.poll_interval)
            if limit:
                count = await asyncio.to_thread(launch.answered, job_dir)
                if count is not None and min(100.0, 100.0 * count / limit) != progress:
                    progress = min(100.0, 100.0 * count / limit)
                    if not done and job_id not in self._cancel_requested:
                        await self._set(job_id, "running", MSG_RUNNING, progress=progress)
            if done:
                return progress

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), self.settings.grace_period)
        except TimeoutError:
            log.warning("process %d did not stop within %.0f s of SIGTERM; killing it", proc.pid,
                        self.settings.grace_period)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    def _job_env(self) -> dict[str, str]:
        """The service's environment without its own token: a harness has no business calling the service."""
        token = self.settings.token
        return {k: v for k, v in os.environ.items() if not (token and v == token)}

    def _secrets(self, job: dict[str, Any]) -> list[str]:
        """Values that must never reach a job's log: its API key and the service's token."""
        name = job["target"]["api_endpoint"].get("api_key_name")
        values = [os.environ.get(name, "") if name else "", self.settings.token or ""]
        return [v for v in values if v]

    async def _set(self, job_id: str, status: str, message: str, *, progress: float | None = None,
                   **changes: Any) -> None:
        await asyncio.to_thread(self.db.update_job, job_id, {
            "status": status, "status_details": status_details(message, progress), "updated_at": now(), **changes,
        })


def _open_log(path: Path) -> IO[str]:
    return path.open("a", encoding="utf-8", errors="replace")


async def _copy_redacted(source: asyncio.StreamReader, sink: IO[str], secrets: list[str]) -> None:
    """Copy the job's output to its log whole lines at a time, so no secret is split across two writes."""
    pending = b""
    while True:
        chunk = await source.read(65536)
        if chunk:
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) < 1 << 20:
                continue
            cut = cut or len(pending)
        else:
            cut = len(pending)
        if cut:
            text = redact_text(pending[:cut].decode("utf-8", errors="replace"), secrets)
            pending = pending[cut:]
            await asyncio.to_thread(_write, sink, text)
        if not chunk:
            return


def _write(sink: IO[str], text: str) -> None:
    sink.write(text)
    sink.flush()
