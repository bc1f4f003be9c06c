"""``python -m evalproxy.jobs.wrap --log FILE --exit-file FILE [--secret-env NAME] [--secrets-from JOB_ID] -- CMD
...``: how a job runs.

The jobs service starts this in a session of its own; it runs ``CMD`` (``evalproxy run ...``), writes CMD's output
to the job's log itself, whole lines at a time with the upstream key (the value of ``$NAME``) and bearer tokens
redacted, and when CMD ends writes its exit status to the exit file (``{"returncode": N}``, replaced atomically).
Nothing of the job goes through the service: if the service is killed, the job goes on, its log keeps growing, and
the next start of the service finds the job's process (reattaches) or its exit file (reports how it ended).

On a cluster (``--secrets-from JOB_ID``), the job's environment holds no secret but a ticket: before CMD starts, the
wrapper fetches the job's secrets from the service with it (:mod:`evalproxy.jobs.tickets`) and puts them into CMD's
environment only (the ticket is not passed on). CMD reads them there by name (``evalproxy run --api-key-name``,
``--cache-url-env``): a secret is never an argument, which ``ps`` would show to every user of the node. A fetch
that fails (the service unreachable, the ticket refused) ends the job with status :data:`FETCH_FAILED` and the
reason in its log and exit file: CMD never runs without its key.

SIGTERM and SIGINT are passed on to CMD (``evalproxy run`` then stops its harness and still runs its hooks). The
process exits with CMD's status (128 + N when CMD died of signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO

import orjson

from evalproxy.adapter.core.redact import redact_text
from evalproxy.jobs.tickets import SERVICE_URL_ENV, TICKET_ENV, FetchError, fetch_secrets

READ_SIZE = 65536
MAX_PENDING = 1 << 20
"""Output without a newline is written once this much of it is waiting (a secret could then be cut in two)."""
DRAIN_SECONDS = 5.0
"""How long to wait for output after CMD exits: a daemon it left behind may hold the pipe open."""
FETCH_FAILED = 78
"""The exit status of a job that could not fetch its secrets (EX_CONFIG): its command never ran."""


def pump(source: IO[bytes], sink: IO[str], secrets: list[str]) -> None:
    """Copy ``source`` to ``sink`` whole lines at a time, redacted, so no secret is split across two writes."""
    pending = b""
    fd = source.fileno()
    while True:
        chunk = os.read(fd, READ_SIZE)
        if chunk:
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) < MAX_PENDING:
                continue
            cut = cut or len(pending)
        else:
            cut = len(pending)
        if cut:
            sink.write(redact_text(pending[:cut].decode("utf-8", errors="replace"), secrets))
            sink.flush()
            pending = pending[cut:]
        if not chunk:
            return


def write_exit(path: Path, returncode: int, reason: str | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"returncode": returncode, **({"reason": reason} if reason else {})}))
    os.replace(tmp, path)


def child_env(job_id: str | None) -> tuple[dict[str, str], list[str]]:
    """(CMD's environment, the secret values it holds): this process's environment, and with ``job_id`` what was
    fetched with the ticket instead of the ticket: the secrets, and the rest of the job's environment where the node
    did not set a variable itself. Raises FetchError."""
    env = dict(os.environ)
    if job_id is None:
        return env, []
    ticket, url = env.pop(TICKET_ENV, ""), env.pop(SERVICE_URL_ENV, "")
    if not ticket or not url:
        raise FetchError(f"--secrets-from needs ${TICKET_ENV} and ${SERVICE_URL_ENV} in the job's environment")
    fetched, rest = fetch_secrets(url, job_id, ticket)
    # What the node set wins over the rest of the service's environment (Slurm's own SLURM_*, the GPUs it gave the
    # job in CUDA_VISIBLE_DEVICES, a TMPDIR of the job's), as it did when sbatch carried that environment.
    return {**rest, **env, **fetched}, [ticket, *fetched.values()]


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    with args.log.open("a", encoding="utf-8", errors="replace") as sink:
        sink.write(f"evalproxy jobs: {message}\n")
    write_exit(args.exit_file, code, message)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalproxy.jobs.wrap")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--exit-file", required=True, type=Path)
    parser.add_argument("--secret-env", action="append", default=[], help="a variable whose value is redacted")
    parser.add_argument("--secrets-from", metavar="JOB_ID", help="fetch the job's secrets with its ticket first")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command after --")
    try:
        env, fetched = child_env(args.secrets_from)
    except FetchError as exc:
        return _fail(args, FETCH_FAILED, f"the job could not fetch its secrets: {exc}")
    secrets = [v for v in (env.get(name, "") for name in args.secret_env) if v] + fetched
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=env)
    except OSError as exc:
        return _fail(args, 127, f"cannot start the job: {exc}")
    sink = args.log.open("a", encoding="utf-8", errors="replace")

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert child.stdout is not None  # asked for above
    copier = threading.Thread(target=pump, args=(child.stdout, sink, secrets), daemon=True)
    copier.start()
    code = child.wait()
    copier.join(DRAIN_SECONDS)
    if not copier.is_alive():  # else a daemon of the harness still writes: the log stays open until we exit
        sink.close()
    write_exit(args.exit_file, code)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
