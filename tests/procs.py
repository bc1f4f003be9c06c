"""Starting ``evalproxy serve`` as a real process, for tests that need signals, SIGKILL or a separate heap."""

from __future__ import annotations

import asyncio
import sys


async def start_serve(*args: str, start_within: float = 30) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``python -m evalproxy serve --port 0 ARGS`` and return the process and its URL once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalproxy", "serve", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), start_within)
    if b"listening on" not in line:
        _, err = await proc.communicate()
        raise AssertionError(f"evalproxy serve did not start: {line!r} {err.decode()[-2000:]}")
    return proc, line.decode().split("listening on ")[1].strip()


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
