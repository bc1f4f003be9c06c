"""Starting ``evalproxy serve`` as a real process, for tests that need signals, SIGKILL or a separate heap, and asking
it a question over a real socket."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import aiohttp

from tests.waiting import wait_until_sync


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


class ServeProcesses:
    """``evalproxy serve`` processes a test starts; :meth:`stop` ends them all with SIGTERM and waits."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def serve(self, *args: str) -> str:
        proc, url = await start_serve(*args)
        self.procs.append(proc)
        return url

    async def stop(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            await asyncio.wait_for(p.communicate(), 30)


async def ask(url: str, body: dict[str, Any], session: aiohttp.ClientSession | None = None) -> tuple[str, str]:
    """(answer text, ``X-EvalProxy-Cache``) of one chat request to the proxy at ``url``; fails on anything but 200."""
    own = session is None
    s = aiohttp.ClientSession() if session is None else session
    try:
        async with s.post(f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            data = await resp.json()
            return str(data["choices"][0]["message"]["content"]), resp.headers.get("X-EvalProxy-Cache", "")
    finally:
        if own:
            await s.close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_up(url: str, proc: subprocess.Popen[bytes], seconds: float = 15) -> None:
    """Wait until ``url`` answers a GET, failing at once if ``proc`` (the server behind it) exited."""
    def up() -> bool:
        assert proc.poll() is None, f"the server for {url} exited"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False

    wait_until_sync(up, what=f"{url} to come up", seconds=seconds, every=0.05)
