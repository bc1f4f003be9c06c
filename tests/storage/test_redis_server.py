"""A real ``redis-server`` for the Redis store's tests: started on a free port with its own data dir, no persistence.

Other test modules import :class:`RedisServer` and the ``redis_server`` fixture from here. Tests are skipped when
the binary is missing (``.ci/setup`` installs the Debian package).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (see .ci/setup)")



class RedisServer:
    """One ``redis-server`` process; :meth:`stop` kills it (SIGKILL with ``hard``) and :meth:`start` brings it back
    on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}")

    def stop(self, *, hard: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if hard:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (see .ci/setup)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@needs_redis
def test_server_starts_and_stops(redis_server: RedisServer) -> None:
    """The fixture's server answers PING on its port and is gone after stop."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(16).startswith(b"+PONG")
    redis_server.stop(hard=True)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis_server.port), timeout=1):
        pass
