"""The Slurm executor's parts that need no cluster: what it reads from Slurm's commands, the batch script it writes
(run for real with bash), the shared-filesystem refusal, the store URL each job gets, the jobs table's new column on
an old database, and ``jobs serve``'s refusals of executor options."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from evalproxy.adapter.core.errors import JobLaunchError, SlurmError
from evalproxy.cli import main
from evalproxy.jobs import launch
from evalproxy.jobs.executors.slurm import (
    CACHE_URL_ENV,
    SlurmExecutor,
    SlurmState,
    parse_job_id,
    parse_sacct,
    parse_scontrol,
    phase_of,
    script_text,
)
from evalproxy.storage.jobs_db import JobsDB

SCONTROL_LINE = (
    "JobId=42 JobName=evalproxy-eval-ABC UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=2 "
    "BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:02 TimeLimit=UNLIMITED TimeMin=N/A NodeList=node7 "
    "BatchHost=node7\n")


class TestParsing:
    @pytest.mark.parametrize(("out", "job_id"), [("42\n", 42), ("42;cluster-a\n", 42), ("  7 ", 7)])
    def test_sbatch_parsable_job_ids_are_read(self, out: str, job_id: int) -> None:
        """``sbatch --parsable`` prints the id, or id;cluster: both give the id."""
        assert parse_job_id(out) == job_id

    @pytest.mark.parametrize("out", ["Submitted batch job 42", "", "42 43", "42;$(reboot)", "-1", "42\n43"])
    def test_anything_else_from_sbatch_is_an_error(self, out: str) -> None:
        """A job id is digits and nothing else: any other output is a SlurmError naming it."""
        with pytest.raises(SlurmError, match="not a job id"):
            parse_job_id(out)

    def test_scontrol_line_gives_state_reason_exit_code_and_restarts(self) -> None:
        """One ``scontrol show job -o`` line gives the state, Slurm's reason, the exit code, the restarts and the
        node."""
        assert parse_scontrol(SCONTROL_LINE) == SlurmState("FAILED", "NonZeroExitCode", 3, 0, 2, "node7")
        assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None

    def test_sacct_gives_the_state_after_scontrol_forgot_the_job(self) -> None:
        """``sacct -P`` gives the state word (without 'by UID') and the exit code with its signal."""
        assert parse_sacct("CANCELLED by 0|0:15\n") == SlurmState("CANCELLED", exit_code=0, signal=15)
        assert parse_sacct("") is None

    @pytest.mark.parametrize(("state", "status", "words"), [
        (SlurmState("PENDING", "Resources"), "pending", "Slurm job 9: PENDING, Resources"),
        (SlurmState("REQUEUED"), "pending", "Slurm job 9: REQUEUED"),
        (SlurmState("RUNNING", nodes="node7"), "running", "Job is running (Slurm job 9 on node7)"),
        (SlurmState("COMPLETING"), "running", "Job is running"),
        (SlurmState("COMPLETED"), "completed", "Job completed successfully"),
        (SlurmState("FAILED", "NonZeroExitCode", 2), "failed", "ended FAILED, NonZeroExitCode, exit code 2"),
        (SlurmState("TIMEOUT", "TimeLimit", 0, 15), "failed", "ended TIMEOUT, TimeLimit, signal 15"),
        (SlurmState("OUT_OF_MEMORY", "OutOfMemory", 0, 9), "failed", "ended OUT_OF_MEMORY, OutOfMemory, signal 9"),
        (SlurmState("NODE_FAIL", "NodeDown", 1), "failed", "ended NODE_FAIL, NodeDown"),
        (SlurmState("CANCELLED"), "cancelled", "cancelled on the cluster (Slurm job 9: CANCELLED)"),
    ])
    def test_slurm_states_map_to_the_api_statuses(self, state: SlurmState, status: str, words: str) -> None:
        """Each Slurm state maps to the API's status, and a failure's message carries Slurm's state and reason."""
        got_status, message = phase_of(9, state)
        assert got_status == status
        assert words in message


class TestScript:
    def test_every_argument_reaches_the_command_as_written(self, tmp_path: Path) -> None:
        """The batch script, run by bash, hands each argument over verbatim: quotes, $(...), backticks and ';' run
        nothing; the wrapper is told to fetch the job's secrets; a store URL among evalproxy run's options is
        refused, never written into the file (the harness's own options are its own)."""
        canary = tmp_path / "canary"
        tricky = [f"$(touch {canary})", f"a'b; touch {canary}", f"`touch {canary}`", "${HOME}", "two words", ""]
        url = "redis://:s3cret-password@cache:6379/0?prefix=p:"
        argv = ["printf", r"[%s]\n", "--log", "l", "--", "run", "--cache-url-env", CACHE_URL_ENV, "--", *tricky,
                "--cache-url", "x"]
        script = tmp_path / "job.sh"
        script.write_text(script_text("eval-X", tmp_path, argv))
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin", CACHE_URL_ENV: url}).stdout
        assert out.splitlines() == [f"[{a}]" for a in [
            "--log", "l", "--secrets-from", "eval-X", "--", "run", "--cache-url-env", CACHE_URL_ENV, "--", *tricky,
            "--cache-url", "x"]]
        with pytest.raises(ValueError, match="CACHE_URL"):
            script_text("eval-X", tmp_path, ["w", "--", "run", "--cache-url", url, "--", "h"])
        assert not canary.exists()
        no_store = script_text("eval-X", tmp_path, ["w", "--", "run", "--", "h"])
        assert "exec w --secrets-from eval-X -- run -- h" in no_store

    def test_sbatch_options_name_the_job_its_output_and_the_users_options(self, tmp_path: Path) -> None:
        """sbatch gets --parsable, the job's name, its directory, the log as Slurm's output (appended), --requeue,
        then the partition, the account and the extra options, each as one argument."""
        ex = SlurmExecutor(partition="gpu", account="proj-1", sbatch_args=("--time=01:00:00", "--mem=4G"))
        argv = ex.submit_argv("eval-X", tmp_path)
        assert argv[:2] == ["sbatch", "--parsable"]
        for option in ("--job-name=evalproxy-eval-X", f"--chdir={tmp_path}", "--open-mode=append", "--requeue",
                       f"--output={tmp_path / launch.LOG_FILE}", "--partition=gpu", "--account=proj-1",
                       "--time=01:00:00", "--mem=4G"):
            assert option in argv
        assert argv[-1] == str(tmp_path / "slurm_job.sh")


class TestSharedFilesystems:
    def test_a_disk_cache_on_nfs_or_lustre_is_refused_with_the_reason(self, tmp_path: Path) -> None:
        """A cache directory under an nfs4 or lustre mount (by /proc/mounts' format) is refused, naming the type
        and what to do; one on a local filesystem is accepted."""
        mounts = tmp_path / "mounts"
        mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path}/shared nfs4 rw 0 0\n"
                          f"10.0.0.1@tcp:/fs {tmp_path}/lus\\040tre lustre rw 0 0\n")
        for where, kind in ((tmp_path / "shared" / "cache", "nfs4"), (tmp_path / "lus tre" / "c", "lustre")):
            with pytest.raises(JobLaunchError, match=f"on {kind}, a filesystem shared.*--cache-url"):
                launch.check_cache_filesystem(where, mounts)
        launch.check_cache_filesystem(tmp_path / "local" / "cache", mounts)
        assert launch.fs_type(tmp_path / "local", mounts) == "ext4"
        assert launch.fs_type(tmp_path) is not None  # the real /proc/mounts

    def test_store_url_per_config_and_none_when_the_config_names_its_own_store(self) -> None:
        """Jobs of one config share a prefix of the service's store, another config gets another; a config whose
        adapter names its own store (or cache dir) keeps it."""
        target: dict[str, Any] = {"api_endpoint": {"url": "http://m/v1", "model_id": "m", "type": "chat",
                                                   "adapter_config": None}}
        a = {"command": ["h", "--n", "1"], "params": {}}
        b = {"command": ["h", "--n", "2"], "params": {}}
        url = "redis://cache:6379/0"
        assert launch.store_url(target, a, url) == launch.store_url(target, a, url)
        assert launch.store_url(target, a, url) != launch.store_url(target, b, url)
        assert (launch.store_url(target, a, url) or "").startswith("redis://cache:6379/0?prefix=evalproxy%3Ajobs%3A")
        assert "prefix=team%3Ajobs%3A" in (launch.store_url(target, a, url + "?prefix=team:&timeout=5") or "")
        own = {**a, "adapter_config": {"interceptors": [{"name": "caching", "config": {"cache_url": "redis://x/1"}}]}}
        assert launch.store_url(target, own, url) is None
        assert launch.disk_cache(target, own, Path("/c"), None) is None
        assert launch.store_url(target, a, None) is None
        assert launch.disk_cache(target, a, Path("/c"), None) == launch.cache_dir(Path("/c"), target, a)


def test_an_old_jobs_database_gets_the_slurm_id_and_ticket_columns(tmp_path: Path) -> None:
    """A jobs.db written before the Slurm executor opens, keeps its jobs, and records a Slurm id and a ticket's
    hash."""
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                     "namespace TEXT NOT NULL, status TEXT NOT NULL, target_ref TEXT, config_ref TEXT, "
                     "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, data TEXT NOT NULL, results TEXT, "
                     "pid INTEGER)")
        conn.execute("INSERT INTO jobs (id, namespace, status, created_at, updated_at, data) VALUES "
                     "('eval-OLD', 'default', 'running', 't', 't', '{\"id\": \"eval-OLD\"}')")
    conn.close()
    db = JobsDB(path)
    try:
        assert db.jobs_in(["running"]) == [({"id": "eval-OLD"}, None, None)]
        db.set_slurm_id("eval-OLD", 77)
        assert db.get_slurm_id("eval-OLD") == 77
        db.set_ticket_hash("eval-OLD", "ab" * 32)
        assert db.get_ticket("eval-OLD") == ("running", "ab" * 32)
        assert db.jobs_in(["running"]) == [({"id": "eval-OLD"}, None, 77)]
    finally:
        db.close()


@pytest.mark.parametrize(("options", "words"), [
    (["--cache-url", "http://cache:6379"], "--cache-url must start with redis://"),
    (["--partition", "gpu"], "need --executor slurm"),
    (["--public-url", "http://login1:3826"], "need --executor slurm"),
    (["--executor", "slurm", "--public-url", "ftp://login1"], "--public-url 'ftp://login1': expected http(s)://"),
    (["--executor", "slurm", "--poll-interval", "0"], "--poll-interval must be more than 0"),
])
def test_jobs_serve_refuses_executor_options_that_cannot_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            options: list[str], words: str) -> None:
    """``jobs serve`` exits 2 before serving, saying which option is wrong."""
    assert main(["jobs", "serve", "--data-dir", str(tmp_path / "d"), "--port", "0", *options]) == 2
    assert words in capsys.readouterr().err


def test_jobs_serve_on_slurm_refuses_a_data_dir_slurm_would_rewrite(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A % in the data directory would be read by Slurm as a pattern of the output path: refused, saying so."""
    assert main(["jobs", "serve", "--executor", "slurm", "--data-dir", str(tmp_path / "100%"), "--port", "0"]) == 2
    assert "Slurm reads %" in capsys.readouterr().err


def test_jobs_serve_on_slurm_needs_slurms_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sbatch and its siblings on PATH, ``jobs serve --executor slurm`` does not start, naming them."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["jobs", "serve", "--executor", "slurm", "--data-dir", str(tmp_path / "d"), "--port", "0"]) == 2
    assert "sbatch, squeue, scontrol, scancel not found on PATH" in capsys.readouterr().err


async def test_a_slurm_command_that_hangs_is_killed_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Slurm command that does not answer (slurmctld unreachable) is killed at its deadline and is a SlurmError
    naming it, so no poll, cancel or stop waits on it for ever."""
    from evalproxy.jobs.executors import slurm

    monkeypatch.setattr(slurm, "COMMAND_TIMEOUT", 0.3)
    with pytest.raises(SlurmError, match="sleep did not answer within"):
        await slurm._command("sleep", "30")
