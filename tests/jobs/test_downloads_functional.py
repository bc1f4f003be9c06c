"""Job downloads and logs (issue 18): streamed in constant memory, never through a symbolic link, never holding the
thread pool the API needs."""

from __future__ import annotations

import asyncio
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from evalproxy.jobs.app import SETTINGS
from tests.jobs.conftest import MakeService, wait_for_status

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

GiB = 1 << 30
MiB = 1 << 20


def rss() -> int:
    """This process's resident memory in bytes (the service runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def finished_job(client: TestClient[Any, Any], *lines: str) -> tuple[str, Path]:
    """A job that printed ``lines`` and completed: (its id, its directory)."""
    script = "import sys; sys.stdout.write(sys.argv[1])"
    job = {"target": {"api_endpoint": {"url": "http://127.0.0.1:9/v1", "model_id": "m"}},
           "config": {"command": [sys.executable, "-c", script, "".join(f"{x}\n" for x in lines)]}}
    resp = await client.post("/v1/evaluation/jobs", json=job)
    assert resp.status == 200, await resp.text()
    job_id = (await resp.json())["id"]
    done = await wait_for_status(client, job_id, "completed", "failed")
    assert done["status"] == "completed", done["status_details"]
    return job_id, client.server.app[SETTINGS].jobs_dir / job_id


def sparse(path: Path, size: int) -> None:
    """A file of ``size`` zero bytes that takes no disk space."""
    with path.open("wb") as f:
        f.truncate(size)


def write_random(path: Path, size: int) -> bytes:
    """Write ``size`` random bytes a MiB at a time; their first MiB."""
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    with path.open("rb") as f:
        return f.read(MiB)


async def save_sparse(resp: ClientResponse, dest: Path) -> int:
    """Save a download, seeking over runs of zeros (the copy stays sparse); the most RSS seen meanwhile."""
    peak = 0
    zeros = bytes(MiB)
    with dest.open("wb") as f:
        n = 0
        async for chunk in resp.content.iter_chunked(MiB):
            if chunk == zeros[:len(chunk)]:
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
            n += 1
            if n % 32 == 0:
                peak = max(peak, rss())
        f.truncate(f.tell())
    return max(peak, rss())


class TestDownload:
    async def test_large_job_downloads_in_constant_memory(self, make_service: MakeService, tmp_path: Path) -> None:
        """A job dir with a 512 MiB file (sparse) and 64 MiB of random bytes downloads as a valid ZIP while the
        service's memory grows by far less than either (the ZIP is never whole in memory)."""
        client = await make_service()
        job_id, job_dir = await finished_job(client, "done")
        sparse(job_dir / "big.bin", 512 * MiB)
        head = write_random(job_dir / "random.bin", 64 * MiB)
        before = rss()
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/download")
        assert resp.status == 200 and resp.content_type == "application/zip"
        peak = await save_sparse(resp, tmp_path / "job.zip")
        assert peak - before < 32 * MiB, f"RSS grew by {(peak - before) / MiB:.0f} MiB"
        with zipfile.ZipFile(tmp_path / "job.zip") as archive:
            sizes = {i.filename: i.file_size for i in archive.infolist()}
            assert sizes[f"{job_id}/big.bin"] == 512 * MiB
            assert sizes[f"{job_id}/random.bin"] == 64 * MiB
            with archive.open(f"{job_id}/random.bin") as f:
                assert f.read(MiB) == head
            assert b"done\n" in archive.read(f"{job_id}/evalproxy_run.log")

    async def test_symlinks_out_of_the_job_dir_are_not_in_the_zip(self, make_service: MakeService, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
        """A link in a job dir to a file or a directory outside it is left out of the ZIP (the service's log says
        so), and so is its content."""
        client = await make_service()
        job_id, job_dir = await finished_job(client, "done")
        secret_file = tmp_path / "passwd"
        secret_file.write_text("root:x:0:0:secret-line\n")
        secret_dir = tmp_path / "home"
        secret_dir.mkdir()
        (secret_dir / "id_rsa").write_text("secret-key\n")
        (job_dir / "passwd").symlink_to(secret_file)
        (job_dir / "home").symlink_to(secret_dir)
        os.mkfifo(job_dir / "fifo")  # reading it would hang the download
        (job_dir / "kept.txt").write_text("mine\n")
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/download")
        assert resp.status == 200
        (tmp_path / "job.zip").write_bytes(await resp.read())
        with zipfile.ZipFile(tmp_path / "job.zip") as archive:
            names = archive.namelist()
            contents = b"".join(archive.read(n) for n in names)
        assert f"{job_id}/kept.txt" in names
        assert not [n for n in names if n.endswith(("passwd", "id_rsa", "fifo"))]
        assert b"secret" not in contents
        skipped = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        assert skipped and "passwd" in skipped[0] and "home" in skipped[0]

    async def test_listing_answers_while_six_downloads_run(self, make_service: MakeService) -> None:
        """With six large downloads in flight (their clients not reading), GET /jobs is answered and none of them
        has finished."""
        client = await make_service()
        job_id, job_dir = await finished_job(client, "done")
        sparse(job_dir / "big.bin", GiB)
        async with asyncio.timeout(20):  # stops a hung test only
            downloads = await asyncio.gather(*(client.get(f"/v1/evaluation/jobs/{job_id}/download")
                                               for _ in range(6)))
            assert [r.status for r in downloads] == [200] * 6
            # Every download thread is busy once four of them send data (the other two wait for a thread).
            reads = {asyncio.ensure_future(r.content.readexactly(1)) for r in downloads}
            started: set[asyncio.Future[bytes]] = set()
            while len(started) < 4:
                done, _ = await asyncio.wait(reads - started, return_when=asyncio.FIRST_COMPLETED)
                started |= done
            resp = await client.get("/v1/evaluation/jobs")
            assert resp.status == 200
            assert (await resp.json())["pagination"]["total_results"] == 1
            assert (await client.get(f"/v1/evaluation/jobs/{job_id}/status")).status == 200
        assert not [r for r in downloads if r.content.at_eof()]
        for task in reads:
            task.cancel()
        for r in downloads:
            r.close()


class TestLogs:
    async def test_tail_and_range(self, make_service: MakeService) -> None:
        """?tail=N gives the last N lines; a Range gives those bytes with 206; a range past the end gives 416."""
        client = await make_service()
        lines = [f"line {i}" for i in range(1000)]
        job_id, job_dir = await finished_job(client, *lines)
        whole = (job_dir / "evalproxy_run.log").read_bytes()
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs")
        assert resp.status == 200 and await resp.read() == whole
        assert resp.headers["Accept-Ranges"] == "bytes"
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs", params={"tail": "3"})
        assert (await resp.text()).splitlines() == whole.decode().splitlines()[-3:]
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs", headers={"Range": "bytes=5-14"})
        assert resp.status == 206 and await resp.read() == whole[5:15]
        assert resp.headers["Content-Range"] == f"bytes 5-14/{len(whole)}"
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs", headers={"Range": "bytes=-20"})
        assert resp.status == 206 and await resp.read() == whole[-20:]
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs", headers={"Range": f"bytes={len(whole)}-"})
        assert resp.status == 416
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs", params={"tail": "0"})
        assert resp.status == 400 and (await resp.json())["field"] == "tail"

    async def test_log_that_is_a_symlink_is_not_followed(self, make_service: MakeService, tmp_path: Path) -> None:
        """A job's log replaced by a link to a file outside the job dir is not served."""
        client = await make_service()
        job_id, job_dir = await finished_job(client, "done")
        outside = tmp_path / "secret.txt"
        outside.write_text("secret\n")
        log = job_dir / "evalproxy_run.log"
        log.unlink()
        log.symlink_to(outside)
        resp = await client.get(f"/v1/evaluation/jobs/{job_id}/logs")
        assert resp.status == 404
        assert "secret\n" not in await resp.text()
