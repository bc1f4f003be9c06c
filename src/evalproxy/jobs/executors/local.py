"""The ``local`` executor: each job is a subprocess of the service's machine, in a session of its own.

The job's process (:mod:`evalproxy.jobs.wrap`) writes its log and its exit status to files of its directory, so it
outlives a service that is killed; the next start finds it alive by its pid (:class:`Reattached`) or finds how it
ended. Stopping a job sends SIGTERM (``evalproxy run`` still runs its hooks), then SIGKILL to its whole process group
after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import IO

from evalproxy.adapter.core.errors import JobLaunchError
from evalproxy.jobs import launch
from evalproxy.jobs.executors.base import JobProcess
from evalproxy.storage.jobs_db import JobsDB

log = logging.getLogger("evalproxy.jobs")


def own_process(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still this job's process, alive (its command line names the job's directory; a zombie
    has none)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return job_id.encode() in cmdline and b"evalproxy" in cmdline


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
            if not await asyncio.to_thread(own_process, self.pid, self._job_id):
                code = await asyncio.to_thread(launch.read_exit, self._job_dir)
                self._code = -1 if code is None else code
                break
            await asyncio.sleep(self._poll)
        return self._code


class LocalExecutor:
    name = "local"
    queues = False
    outlives_service = False
    distributed = False
    fetches_secrets = False  # its child inherits the environment in memory: nothing reaches a disk

    async def launch(self, job_id: str, job_dir: Path, argv: list[str], logfile: IO[str],
                     env: dict[str, str]) -> JobProcess:
        try:
            # The job's own process writes its log: the service's file handle is only its stdout and stderr.
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                cwd=job_dir, start_new_session=True, env=env,
            )
        except OSError as exc:
            raise JobLaunchError(f"cannot start the job: {exc}") from None

    def remember(self, db: JobsDB, job_id: str, proc: JobProcess) -> None:
        db.set_pid(job_id, proc.pid)

    async def stop(self, proc: JobProcess, grace: float) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), grace)
        except TimeoutError:
            log.warning("process %d did not stop within %.0f s of SIGTERM; killing it", proc.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def aclose(self) -> None:
        """Nothing of its own runs: each job is watched by the runner."""
