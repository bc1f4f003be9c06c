"""``python -m evalproxy.jobs.wrap --log FILE --exit-file FILE [--secret-env NAME] -- CMD ...``: how a job runs.

The jobs service starts this in a session of its own; it runs ``CMD`` (``evalproxy run ...``), writes CMD's output
to the job's log itself, whole lines at a time with the upstream key (the value of ``$NAME``) and bearer tokens
redacted, and when CMD ends writes its exit status to the exit file (``{"returncode": N}``, replaced atomically).
Nothing of the job goes through the service: if the service is killed, the job goes on, its log keeps growing, and
the next start of the service finds the job's process (reattaches) or its exit file (reports how it ended).

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

READ_SIZE = 65536
MAX_PENDING = 1 << 20
"""Output without a newline is written once this much of it is waiting (a secret could then be cut in two)."""
DRAIN_SECONDS = 5.0
"""How long to wait for output after CMD exits: a daemon it left behind may hold the pipe open."""


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


def write_exit(path: Path, returncode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"returncode": returncode}))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalproxy.jobs.wrap")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--exit-file", required=True, type=Path)
    parser.add_argument("--secret-env", action="append", default=[], help="a variable whose value is redacted")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command after --")
    secrets = [v for v in (os.environ.get(name, "") for name in args.secret_env) if v]
    sink = args.log.open("a", encoding="utf-8", errors="replace")
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        sink.write(f"evalproxy jobs: cannot start the job: {exc}\n")
        sink.close()
        write_exit(args.exit_file, 127)
        return 127

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
