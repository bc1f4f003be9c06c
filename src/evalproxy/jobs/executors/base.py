"""What the jobs runner needs of an executor, and of the job it started.

An executor hands a prepared job (the ``evalproxy run`` argv under :mod:`evalproxy.jobs.wrap`, its directory, its
environment) to whatever runs it: :mod:`.local` starts it as a subprocess of this machine, :mod:`.slurm` submits it
with ``sbatch``. The runner then watches the :class:`JobProcess` it got back until it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Protocol

from evalproxy.storage.jobs_db import JobsDB


class JobProcess(Protocol):
    """What the runner needs of a job's process: a child it started, one it found alive after a restart, or a job
    the cluster runs."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int, /) -> None: ...

    async def wait(self) -> int: ...


Phase = tuple[str, str]
"""(status, message) of a job its executor queues or runs: ``("pending", "Job is pending (Slurm: ...)")``."""


class Executor(Protocol):
    name: str
    """``local`` or ``slurm``: what ``evalproxy jobs serve --executor`` names."""
    queues: bool
    """Whether it queues jobs itself (Slurm does): the runner then holds no ``--max-concurrent`` slot for them."""
    outlives_service: bool
    """Whether its jobs go on when the service stops normally (on a cluster they do; the next start watches them)."""
    fetches_secrets: bool
    """Whether its jobs get no secret in their environment (a cluster stores it on disk) but a ticket to fetch them
    from the service with (:mod:`evalproxy.jobs.tickets`)."""
    distributed: bool
    """Whether its jobs may run on other machines: their disk cache must then not be on a shared filesystem, and a
    launch that fails says why in the job's status message."""

    async def launch(self, job_id: str, job_dir: Path, argv: list[str], logfile: IO[str],
                     env: dict[str, str]) -> JobProcess:
        """Start the job (``argv`` in ``job_dir``, its output appended to ``logfile``); raise ``JobLaunchError``
        saying why it cannot."""
        ...

    def remember(self, db: JobsDB, job_id: str, proc: JobProcess) -> None:
        """Record what finds the job again after a restart (its pid, its Slurm id); called in a thread."""
        ...

    async def stop(self, proc: JobProcess, grace: float) -> None:
        """Ask the job to stop (its hooks still run) and return once it has ended."""
        ...

    async def aclose(self) -> None:
        """Stop whatever the executor itself runs (a poller of the cluster's states); jobs are left alone."""
        ...
