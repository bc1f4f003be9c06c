"""The ``slurm`` executor: each job is a batch job of a Slurm cluster, submitted with ``sbatch``.

The batch script (``slurm_job.sh`` in the job's directory) runs the job exactly as the local executor does:
``evalproxy run`` under :mod:`evalproxy.jobs.wrap`, which writes the redacted log and the exit status into the job's
directory (which the nodes must share with the service). Slurm's own output file is that same log (``--output``,
appended to), so ``/logs`` shows Slurm's messages (a cancel, a requeue) among the run's. Every argument goes into the
script quoted (:func:`shlex.join`). No secret goes into it nor into the job's environment, which slurmctld keeps on
its disk: the job gets a ticket instead, and its wrapper fetches the upstream key and the store URL from the service
on the node (:mod:`evalproxy.jobs.tickets`; ``--secrets-from``), for ``evalproxy run``'s environment only.

States come from one ``squeue`` for every job watched, every poll; a job that ended is then asked about alone
(``scontrol show job`` for its exit code, and ``sacct`` when the cluster keeps accounting and ``scontrol`` forgot
the job). PENDING/RUNNING/COMPLETED/FAILED/TIMEOUT/OUT_OF_MEMORY/NODE_FAIL/CANCELLED... map to the API's
statuses, with Slurm's reason in the message. A job is submitted ``--requeue``: a node that fails or a preemption
puts it back in the queue, and the requeued run resumes from the shared cache. The service's restart loses nothing:
jobs are found again by the Slurm id kept in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from evalproxy.adapter.core.errors import SlurmError
from evalproxy.jobs import launch
from evalproxy.jobs.executors.base import JobProcess, Phase
from evalproxy.jobs.tickets import CACHE_URL_ENV
from evalproxy.storage.jobs_db import JobsDB

log = logging.getLogger("evalproxy.jobs")

SCRIPT = "slurm_job.sh"
_PARSABLE = re.compile(r"(\d{1,18})(?:;[A-Za-z0-9_.-]+)?")
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(\S*)")
_EXIT = re.compile(r"(\d+):(\d+)")
NO_ACCOUNTING = "accounting storage is disabled"

WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "STOPPED",
           "RESIZING", "SPECIAL_EXIT", "RESV_DEL_HOLD", "SIGNALING"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
COMMAND_TIMEOUT = 60.0
"""Seconds a Slurm command (sbatch, squeue, scontrol, sacct, scancel) may take before it is killed: a hung one must
not hold the poller, a cancel or the service's stop."""
KILL_AFTER = 60.0
"""Seconds after ``scancel`` before SIGKILL is asked for (Slurm's own KillWait normally ends the job first)."""


@dataclass(frozen=True)
class SlurmState:
    """One look at a Slurm job: its state word, Slurm's reason, its exit status and how often it was requeued."""

    state: str
    reason: str = "None"
    exit_code: int = 0
    signal: int = 0
    restarts: int = 0
    nodes: str = ""
    """Where it runs (Slurm's node list), when it runs."""

    @property
    def final(self) -> bool:
        return self.state not in WAITING and self.state not in RUNNING


def parse_job_id(out: str) -> int:
    """The job id ``sbatch --parsable`` printed (``123`` or ``123;cluster``); anything else is a SlurmError."""
    m = _PARSABLE.fullmatch(out.strip())
    if m is None:
        raise SlurmError(f"sbatch --parsable printed {out.strip()[:200]!r}, not a job id")
    return int(m.group(1))


def parse_scontrol(text: str) -> SlurmState | None:
    """The state in one ``scontrol show job -o`` line (``JobState=RUNNING Reason=None ExitCode=0:0 ...``)."""
    fields = dict(_FIELD.findall(text))
    state = fields.get("JobState")
    if not state:
        return None
    code = _EXIT.fullmatch(fields.get("ExitCode", ""))
    restarts = fields.get("Restarts", "0")
    nodes = fields.get("NodeList", "")
    return SlurmState(state=state, reason=fields.get("Reason", "None"),
                      exit_code=int(code.group(1)) if code else 0, signal=int(code.group(2)) if code else 0,
                      restarts=int(restarts) if restarts.isdigit() else 0, nodes="" if nodes == "(null)" else nodes)


def parse_sacct(text: str) -> SlurmState | None:
    """The state in ``sacct -n -P -X -o State,ExitCode`` (``CANCELLED by 0|0:15``)."""
    for line in text.splitlines():
        state, _, exit_code = line.partition("|")
        if state.strip():
            code = _EXIT.fullmatch(exit_code.strip())
            return SlurmState(state=state.split()[0], exit_code=int(code.group(1)) if code else 0,
                              signal=int(code.group(2)) if code else 0)
    return None


def phase_of(slurm_id: int, s: SlurmState) -> Phase:
    """(status, message) the API shows for a Slurm job in state ``s``."""
    why = f", {s.reason}" if s.reason not in ("None", "") else ""
    if s.state in WAITING:
        return "pending", f"Job is pending (Slurm job {slurm_id}: {s.state}{why})"
    if s.state in RUNNING:
        return "running", f"Job is running (Slurm job {slurm_id}{' on ' + s.nodes if s.nodes else ''})"
    if s.state == "COMPLETED":
        return "completed", "Job completed successfully"
    if s.state == "CANCELLED":
        return "cancelled", f"Job was cancelled on the cluster (Slurm job {slurm_id}: CANCELLED)"
    code = f", signal {s.signal}" if s.signal else f", exit code {s.exit_code}"
    return "failed", (f"Job failed on the cluster: Slurm job {slurm_id} ended {s.state}{why}{code} "
                      "(its output is in /logs)")


def script_text(job_id: str, job_dir: Path, argv: list[str]) -> str:
    """The batch script: the command quoted word by word, the wrapper told to fetch the job's secrets
    (``--secrets-from JOB_ID``). No secret is in ``argv`` (the job's ``evalproxy run`` reads the key and the store
    URL from variables it is given by name, ``--api-key-name``, ``--cache-url-env``): one that is, a ``--cache-url``
    value, is refused (ValueError), never written where slurmctld keeps scripts."""
    args = list(argv)
    cut = args.index("--") if "--" in args else len(args)  # the end of the wrapper's own options
    run_end = args.index("--", cut + 1) if "--" in args[cut + 1:] else len(args)  # and of evalproxy run's
    if "--cache-url" in args[cut + 1:run_end]:
        raise ValueError(f"a store URL as an argument would be written into the job's script: pass it in "
                         f"${CACHE_URL_ENV} (--cache-url-env)")
    args[cut:cut] = ["--secrets-from", job_id]
    lines = ["#!/bin/bash", f"# evalproxy job {job_id}, submitted by evalproxy jobs serve --executor slurm",
             f"cd {shlex.quote(str(job_dir))} || exit 1",
             f"rm -f {shlex.quote(launch.EXIT_FILE)}  # a requeued run writes its own",
             "exec " + shlex.join(args), ""]
    return "\n".join(lines)


async def _command(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, stdout, stderr) of a Slurm command; a missing command is a SlurmError."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc} (is Slurm's client installed on this machine?)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            proc.kill()
        await proc.wait()
        raise SlurmError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT:.0f} s (is slurmctld reachable?)") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


class SlurmJob:
    """A submitted job. Its executor looks at every job it watches at once, every ``poll`` seconds (one ``squeue``
    for all of them); ``wait`` ends when the job's state is final. ``phase`` is what the API shows meanwhile, and
    how it ended once it has."""

    def __init__(self, executor: SlurmExecutor, slurm_id: int, job_dir: Path) -> None:
        self.slurm_id, self.executor, self._job_dir = slurm_id, executor, job_dir
        self.state: SlurmState | None = None
        self.reason: str | None = None
        """Why the job ended before its command ran (it could not fetch its secrets), as its wrapper wrote."""
        self._code: int | None = None
        self._ended = asyncio.Event()
        self._waiters = 0
        self._signals: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int:
        return self.slurm_id

    @property
    def returncode(self) -> int | None:
        return self._code

    @property
    def phase(self) -> Phase | None:
        if self.state is None:
            return None
        status, message = phase_of(self.slurm_id, self.state)
        return status, f"{message}: {self.reason}" if self.reason and status == "failed" else message

    def send_signal(self, sig: int, /) -> None:
        task = asyncio.ensure_future(self.executor.scancel(self.slurm_id, sig))
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    async def refresh(self) -> SlurmState:
        """Look at the job once, now."""
        return await self.settle((await self.executor.look_all([self.slurm_id]))[self.slurm_id])

    async def settle(self, state: SlurmState | None) -> SlurmState:
        """Take ``state`` as the job's; a job Slurm no longer knows (None) ended as its exit file says."""
        if state is None:
            code = await asyncio.to_thread(launch.read_exit, self._job_dir)
            state = SlurmState("COMPLETED") if code == 0 else SlurmState(
                "FAILED", reason="the cluster no longer knows the job" if code is None else "NonZeroExitCode",
                exit_code=code if code is not None else 0)
        if state != self.state and self.state is not None:
            log.info("Slurm job %d: %s (%s)", self.slurm_id, state.state, state.reason)
        self.state = state
        if state.final and state.state != "COMPLETED" and self.reason is None:
            self.reason = await asyncio.to_thread(launch.read_exit_reason, self._job_dir)
        if state.final and not self._ended.is_set():
            self._code = 0 if state.state == "COMPLETED" else (
                state.exit_code or (128 + state.signal if state.signal else 1))
            self._ended.set()
        return state

    async def wait(self) -> int:
        """Its exit status once Slurm says it ended; it is watched while anyone waits."""
        self._waiters += 1
        self.executor.watch(self)
        try:
            await self._ended.wait()
        finally:
            self._waiters -= 1
            if not self._waiters:
                self.executor.unwatch(self)
        assert self._code is not None  # set with _ended
        return self._code


class SlurmExecutor:
    name = "slurm"
    queues = True
    outlives_service = True
    distributed = True
    fetches_secrets = True

    def __init__(self, *, partition: str | None = None, account: str | None = None,
                 sbatch_args: tuple[str, ...] = (), poll: float = 2.0) -> None:
        self.partition, self.account, self.sbatch_args, self.poll = partition, account, sbatch_args, poll
        self._accounting: bool | None = None
        self._watched: dict[int, SlurmJob] = {}
        self._poller: asyncio.Task[None] | None = None

    def submit_argv(self, job_id: str, job_dir: Path) -> list[str]:
        argv = ["sbatch", "--parsable", f"--job-name=evalproxy-{job_id}", f"--chdir={job_dir}",
                f"--output={job_dir / launch.LOG_FILE}", "--open-mode=append", "--requeue"]
        if self.partition:
            argv.append(f"--partition={self.partition}")
        if self.account:
            argv.append(f"--account={self.account}")
        return [*argv, *self.sbatch_args, str(job_dir / SCRIPT)]

    async def launch(self, job_id: str, job_dir: Path, argv: list[str], logfile: IO[str],
                     env: dict[str, str]) -> JobProcess:
        await asyncio.to_thread(_write_script, job_dir / SCRIPT, script_text(job_id, job_dir, argv))
        # env has no secret (the runner took them out and put a ticket in): slurmctld stores it on its disk.
        code, out, err = await _command(*self.submit_argv(job_id, job_dir), env=env)
        if code != 0:
            raise SlurmError(f"sbatch refused the job: {_last_line(err or out)}")
        job = SlurmJob(self, parse_job_id(out), job_dir)
        log.info("job %s: submitted as Slurm job %d", job_id, job.slurm_id)
        with contextlib.suppress(SlurmError):
            await job.refresh()
        return job

    def attach(self, slurm_id: int, job_dir: Path) -> SlurmJob:
        """A job submitted before the service restarted, found again by its Slurm id."""
        return SlurmJob(self, slurm_id, job_dir)

    def remember(self, db: JobsDB, job_id: str, proc: JobProcess) -> None:
        db.set_slurm_id(job_id, proc.pid)

    async def stop(self, proc: JobProcess, grace: float) -> None:
        """``scancel`` (SIGTERM to the job's processes; Slurm sends SIGKILL after its KillWait), then wait."""
        if proc.returncode is not None:
            return
        await self.scancel(proc.pid)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), max(grace, KILL_AFTER))
        except TimeoutError:
            log.warning("Slurm job %d did not end after scancel; asking for SIGKILL", proc.pid)
            await self.scancel(proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), KILL_AFTER)
            except TimeoutError:
                log.warning("Slurm job %d still not ended after SIGKILL; its state is left to the next poll", proc.pid)

    async def scancel(self, slurm_id: int, sig: int | None = None) -> None:
        argv = ["scancel", *([f"--signal={signal.Signals(sig).name.removeprefix('SIG')}", "--full"] if sig else []),
                str(slurm_id)]
        try:
            code, out, err = await _command(*argv)
        except SlurmError as exc:  # the poll still sees the job and says how it ended
            log.warning("scancel %d: %s", slurm_id, exc)
            return
        if code != 0:
            log.warning("scancel %d: %s", slurm_id, _last_line(err or out))

    def watch(self, job: SlurmJob) -> None:
        self._watched[job.slurm_id] = job
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    def unwatch(self, job: SlurmJob) -> None:
        if self._watched.get(job.slurm_id) is job:
            del self._watched[job.slurm_id]

    async def aclose(self) -> None:
        """Stop looking at jobs (they go on: the next start of the service looks again)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None

    async def _poll(self) -> None:
        """While jobs are watched: one look at all of them, every ``poll`` seconds."""
        while self._watched:
            jobs = dict(self._watched)
            try:
                states = await self.look_all(list(jobs))
            except SlurmError as exc:  # slurmctld restarting, say: look again at the next tick
                log.warning("Slurm: %s", exc)
                states = {}
            for slurm_id, state in states.items():
                try:
                    await jobs[slurm_id].settle(state)
                except SlurmError as exc:  # scontrol/sacct did not answer: settled at a later tick
                    log.warning("Slurm: %s", exc)
            await asyncio.sleep(self.poll)

    async def look_all(self, slurm_ids: list[int]) -> dict[int, SlurmState | None]:
        """The state of each job: one ``squeue`` for all; a job that ended (or that squeue no longer lists) is then
        asked about alone, for its exit code (:meth:`look`)."""
        code, out, err = await _command("squeue", "--noheader", "--states=all", "--jobs",
                                        ",".join(map(str, slurm_ids)), "--format=%i|%T|%r|%N")
        if code != 0 and "invalid job id" not in (err + out).lower():
            raise SlurmError(f"squeue: {_last_line(err or out)}")
        listed: dict[int, SlurmState] = {}
        for line in out.splitlines():
            job, _, rest = line.strip().partition("|")
            word, _, rest = rest.partition("|")
            reason, _, nodes = rest.partition("|")
            if job.isdigit() and word:
                listed[int(job)] = SlurmState(state=word, reason=reason or "None", nodes=nodes.strip())
        states: dict[int, SlurmState | None] = {}
        for slurm_id in slurm_ids:
            state = listed.get(slurm_id)
            states[slurm_id] = await self.look(slurm_id) if state is None or state.final else state
        return states

    async def look(self, slurm_id: int) -> SlurmState | None:
        """The job's state from ``scontrol``, else from ``sacct`` when the cluster keeps accounting; None when
        neither knows it (a cluster without accounting forgets a job MinJobAge seconds after it ended)."""
        code, out, err = await _command("scontrol", "show", "job", "-o", str(slurm_id))
        if code == 0:
            state = parse_scontrol(out)
            if state is not None:
                return state
        elif "invalid job id" not in (err + out).lower():
            raise SlurmError(f"scontrol show job {slurm_id}: {_last_line(err or out)}")
        if self._accounting is False:
            return None
        code, out, err = await _command("sacct", "-n", "-P", "-X", "-j", str(slurm_id), "-o", "State,ExitCode")
        if NO_ACCOUNTING in (err + out).lower():
            self._accounting = False
            return None
        self._accounting = code == 0
        return parse_sacct(out) if code == 0 else None


def _write_script(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o700)
