"""Runs jobs: a queue bounded by ``max_concurrent``, one ``evalproxy run`` subprocess per job, cancel and recovery.

A job's life: ``created`` (recorded) -> ``pending`` (waiting for a slot) -> ``running`` (its subprocess is alive)
-> ``completed`` (exit 0) | ``failed`` (it could not start, or exited non-zero, or the service stopped under it) |
``cancelled`` (asked to). Cancelling a running job sends SIGTERM to ``evalproxy run``, which forwards it to the
harness and still runs its post-eval hooks; after ``grace_period`` seconds the whole process group gets SIGKILL.

Each job runs under :mod:`evalproxy.jobs.wrap` in a session of its own, so the service's own signals never reach
it, and it writes its log and, when it ends, its exit status to files of the job directory: nothing of it goes
through the service. If the service dies while jobs run (``kill -9``), the jobs go on; the next start finds them
``running`` in the database and, for each, either its process still alive (it is watched again: progress, cancel,
its end) or its exit file (the job is reported as it ended). A job whose process is gone without an exit file was
killed with the service's machine or by hand: it is failed, saying why. A service stopped normally (SIGTERM) stops
its running jobs first (hooks run) and marks them failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, Protocol

from evalproxy.jobs import launch
from evalproxy.jobs.models import now
from evalproxy.jobs.settings import Settings
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


def _own_process(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still this job's process, alive (its command line names the job's directory; a zombie
    has none)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return job_id.encode() in cmdline and b"evalproxy" in cmdline


class JobProcess(Protocol):
    """What the runner needs of a job's process: a child it started, or one it found alive after a restart."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int, /) -> None: ...

    async def wait(self) -> int: ...


class Reattached:
    """A job's process that outlived the service which started it: not our child, so it is watched by polling, and
    its exit status is the one it wrote to its exit file (-1 when it wrote none: it was killed)."""

    def __init__(self, pid: int, job_id: str, job_dir: Path, poll: float) -> None:
        self.pid, self._job_id, self._job_dir, self._poll = pid, job_id, job_dir, poll
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._code

    def send_signal(self, sig: int, /) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    async def wait(self) -> int:
        while self._code is None:
            if not await asyncio.to_thread(_own_process, self.pid, self._job_id):
                code = await asyncio.to_thread(launch.read_exit, self._job_dir)
                self._code = -1 if code is None else code
                break
            await asyncio.sleep(self._poll)
        return self._code


class JobRunner:
    def __init__(self, db: JobsDB, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, JobProcess] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False

    # lifecycle

    async def recover(self) -> None:
        """After a restart: a job still running is watched again, one that ended while the service was away is
        reported as it ended; the queue is submitted again."""
        for job, pid in await asyncio.to_thread(self.db.jobs_in, ["running"]):
            job_id = job["id"]
            if pid is not None and await asyncio.to_thread(_own_process, pid, job_id):
                log.info("job %s: its process %d outlived the previous service: watching it again", job_id, pid)
                self._track(job_id, self._reattach(job, pid))
                continue
            code = await asyncio.to_thread(launch.read_exit, self.settings.jobs_dir / job_id)
            await asyncio.to_thread(self.db.set_pid, job_id, None)
            if code is None:
                await self._set(job_id, "failed", MSG_INTERRUPTED, progress=job["status_details"].get("progress"))
            else:
                log.info("job %s: ended with status %d while the service was away", job_id, code)
                await self._conclude(job_id, code, job["status_details"].get("progress"), _limit(job))
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
        try:
            argv = await asyncio.to_thread(launch.prepare, job_dir, job["target"], job["config"],
                                           self.settings.cache_root, self.settings.python)
            logfile = await asyncio.to_thread(_open_log, job_dir / launch.LOG_FILE)
        except OSError as exc:
            log.error("job %s: cannot prepare %s: %s", job_id, job_dir, exc)
            await self._set(job_id, "failed", MSG_LAUNCH_FAILED)
            return
        key_name = job["target"]["api_endpoint"].get("api_key_name")
        try:
            if key_name and not os.environ.get(key_name):
                await asyncio.to_thread(_write, logfile, f"evalproxy jobs: the target's api_key_name is {key_name}, "
                                        "but the service's environment has no such variable\n")
                await self._set(job_id, "failed", MSG_LAUNCH_FAILED, output_files_url=download_url(job_id))
                return
            try:
                # The job's own process writes its log: the service's file handle is only its stdout and stderr.
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                    cwd=job_dir, start_new_session=True, env=self._job_env(),
                )
                self._procs[job_id] = proc  # before any other await: a stopping service must find it
                await asyncio.to_thread(self.db.set_pid, job_id, proc.pid)  # and a restarted one too
            except OSError as exc:
                await asyncio.to_thread(_write, logfile, f"evalproxy jobs: cannot start the job: {exc}\n")
                await self._set(job_id, "failed", MSG_LAUNCH_FAILED, output_files_url=download_url(job_id))
                return
        finally:
            await asyncio.to_thread(logfile.close)
        # "running" once its process is alive and recorded: a service killed right after saying so finds it again.
        await self._set(job_id, "running", MSG_RUNNING, progress=0.0 if limit else None,
                        output_files_url=download_url(job_id))
        log.info("job %s: running as process %d", job_id, proc.pid)
        await self._follow(job_id, proc, limit)

    async def _reattach(self, job: dict[str, Any], pid: int) -> None:
        """Watch a job whose process outlived the previous service, in a slot when one is free (it runs anyway)."""
        job_id = job["id"]
        proc = Reattached(pid, job_id, self.settings.jobs_dir / job_id, self.settings.poll_interval)
        slot = not self._slots.locked()
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
        log.info("job %s: exited with status %s", job_id, code)
        if job_id in self._cancel_requested:
            await self._set(job_id, "cancelled", MSG_CANCELLED, progress=progress)
        elif self._stopping:
            await self._set(job_id, "failed", MSG_INTERRUPTED, progress=progress)
        else:
            await self._conclude(job_id, code, progress, limit)

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

    async def _terminate(self, proc: JobProcess) -> None:
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
        """The service's environment without its own token (a harness has no business calling the service), and
        with a relative PYTHONPATH made absolute: the job runs in its own directory but must import the same
        evalproxy as the service."""
        token = self.settings.token
        env = {k: v for k, v in os.environ.items() if not (token and v == token)}
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p
                                                for p in env["PYTHONPATH"].split(os.pathsep))
        return env

    async def _set(self, job_id: str, status: str, message: str, *, progress: float | None = None,
                   **changes: Any) -> None:
        await asyncio.to_thread(self.db.update_job, job_id, {
            "status": status, "status_details": status_details(message, progress), "updated_at": now(), **changes,
        })


def _open_log(path: Path) -> IO[str]:
    return path.open("a", encoding="utf-8", errors="replace")


def _write(sink: IO[str], text: str) -> None:
    sink.write(text)
    sink.flush()
