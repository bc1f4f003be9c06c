"""How the jobs service runs: where its state lives, how many jobs at once, who may call it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 3826
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    """Holds ``jobs.db``, one directory per job under ``jobs/`` and the shared answer caches under ``cache/``."""
    max_concurrent: int = 2
    token: str | None = None
    """When set, every call needs ``Authorization: Bearer <token>``; ``evalproxy jobs serve`` always sets one unless
    told ``--no-token`` on loopback."""
    bind: str = "127.0.0.1"
    """The address served: with the allowed names, the Host headers the service answers (others get 421)."""
    allowed_hosts: tuple[str, ...] = ()
    """More Host names that are this service's (``*`` any, ``.example.org`` a domain and its subdomains)."""
    allowed_origins: tuple[str, ...] = ()
    """Web page origins that may call (with CORS); a request from any other page gets 403."""
    grace_period: float = 30.0
    """Seconds a cancelled job has between SIGTERM (its hooks still run) and SIGKILL."""
    poll_interval: float = 0.5
    """How often a running job's progress is read from its statistics file."""
    python: str = sys.executable
    """The interpreter that runs ``python -m evalproxy run`` for each job (on a cluster: the same path on the nodes)."""
    executor: str = "local"
    """``local`` (a subprocess per job on this machine) or ``slurm`` (a batch job per job, with ``sbatch``)."""
    partition: str | None = None
    account: str | None = None
    sbatch_args: tuple[str, ...] = ()
    """More ``sbatch`` options for every job (``--time=02:00:00``, ``--mem=8G``, ``--gres=gpu:1``)."""
    public_url: str | None = None
    """The service's URL as the nodes of a cluster reach it (``jobs serve --public-url``); by default the address it
    is bound to. A job on the cluster fetches its secrets there with its ticket."""
    cache_url: str | None = None
    """The store every job's answers go to (``redis://host:6379/0``), unless its adapter config names its own; each
    cache identity gets its own key prefix in it."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def cache_root(self) -> Path:
        return self.data_dir / "cache"
