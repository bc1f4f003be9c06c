"""Where jobs run: :mod:`.local` (a subprocess per job on this machine) or :mod:`.slurm` (a batch job per job)."""

from __future__ import annotations

from evalproxy.jobs.executors.base import Executor
from evalproxy.jobs.executors.local import LocalExecutor
from evalproxy.jobs.executors.slurm import SlurmExecutor
from evalproxy.jobs.settings import EXECUTORS, Settings


def make_executor(settings: Settings) -> Executor:
    if settings.executor == "slurm":
        return SlurmExecutor(partition=settings.partition, account=settings.account,
                             sbatch_args=settings.sbatch_args, poll=settings.poll_interval)
    if settings.executor == "local":
        return LocalExecutor()
    raise ValueError(f"executor: no executor {settings.executor!r} (one of {', '.join(EXECUTORS)})")
