"""A job's files out to a client in constant memory: its directory as a ZIP written while it is sent, its log whole,
from a byte range (``Range``) or as its last lines (``?tail=N``).

Nothing here holds more than a few chunks of a file: the ZIP is written by :mod:`zipfile` into a sink that hands
whole chunks to the event loop, at most ``QUEUED_CHUNKS`` ahead of what the client has taken, and a log is read
chunk by chunk with ``pread``. The disk is read on the service's own small download executor, never on the default
one that status updates and database calls use, so downloads in flight never slow the API down.

Only the job's own files go out: every file is opened without following a symbolic link (``O_NOFOLLOW``, relative to
its directory's descriptor), directories are walked without following links, and what is skipped (links, FIFOs,
sockets, unreadable files) is logged by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from aiohttp import web

from evalproxy.adapter.core.errors import JobsBadRequestError, JobsError, JobsNotFoundError

log = logging.getLogger("evalproxy.jobs")

CHUNK = 1 << 20
QUEUED_CHUNKS = 4
STORE_ABOVE = 32 << 20
"""Files larger than this go into the ZIP as they are: deflating gigabytes costs more than sending them."""
DOWNLOAD_THREADS = 4
STALLED_CLIENT_SECONDS = 60.0
"""A client that takes nothing for this long loses its download (and frees the thread writing its ZIP)."""
MAX_TAIL_LINES = 1_000_000
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class RangeNotSatisfiableError(JobsError):
    status = 416


class _Aborted(Exception):
    """The client went away (or the service is stopping): the ZIP writer stops."""


class Downloads:
    """The executor that reads job files for clients, and the ZIP writers in flight; :meth:`aclose` stops them."""

    def __init__(self, threads: int = DOWNLOAD_THREADS) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="jobs-download")
        self._aborts: set[threading.Event] = set()

    async def aclose(self) -> None:
        for abort in self._aborts:
            abort.set()
        # The writers see their abort within a second; nothing waits for them here.
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def zip_dir(self, request: web.Request, job_dir: Path, top: str) -> web.StreamResponse:
        """Send ``job_dir`` as a ZIP whose entries sit under ``top/``, written while it goes out."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        abort = threading.Event()
        sink = _ChunkSink(loop, queue, abort)

        def produce() -> list[str]:
            try:
                skipped = _write_zip(job_dir, top, sink)
                sink.finish()
                return skipped
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        resp = web.StreamResponse(headers={"Content-Type": "application/zip",
                                           "Content-Disposition": f'attachment; filename="{top}.zip"'})
        self._aborts.add(abort)
        producer = loop.run_in_executor(self.executor, produce)
        try:
            await resp.prepare(request)
            while (chunk := await queue.get()) is not None:
                async with asyncio.timeout(STALLED_CLIENT_SECONDS):
                    await resp.write(chunk)
                sink.taken()
            skipped = await producer
        finally:
            abort.set()
            self._aborts.discard(abort)
            if not producer.done():  # the client left: the writer stops at its next chunk; its error is expected
                producer.add_done_callback(lambda f: f.cancelled() or f.exception())
        if skipped:
            log.warning("download of %s: left out %d entries that are symbolic links or not regular files: %s",
                        top, len(skipped), ", ".join(skipped[:20]))
        await resp.write_eof()
        return resp

    async def send_log(self, request: web.Request, path: Path) -> web.StreamResponse:
        """Send the log at ``path``: whole, its last ``?tail=N`` lines, or the byte range a ``Range`` header asks."""
        tail = _tail_lines(request)
        try:
            wanted = request.http_range
        except ValueError:
            raise RangeNotSatisfiableError(f"Range: cannot serve {request.headers.get('Range')!r} (one range of "
                                           "bytes, 'bytes=START-END', 'bytes=START-' or 'bytes=-LAST')") from None
        ranged = wanted.start is not None or wanted.stop is not None
        if tail is not None and ranged:
            raise JobsBadRequestError("tail: give tail or a Range header, not both", field="tail")
        loop = asyncio.get_running_loop()
        fd, size = await loop.run_in_executor(self.executor, _open_regular, path)
        try:
            start, end = 0, size
            if tail is not None:
                start = await loop.run_in_executor(self.executor, _tail_offset, fd, size, tail)
            elif ranged:
                start, end = _clip(wanted, size)
            headers = {"Content-Type": "text/plain; charset=utf-8", "Accept-Ranges": "bytes",
                       "Content-Length": str(end - start)}
            if ranged:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            resp = web.StreamResponse(status=206 if ranged else 200, headers=headers)
            await resp.prepare(request)
            offset = start
            while offset < end:
                block = await loop.run_in_executor(self.executor, os.pread, fd, min(CHUNK, end - offset), offset)
                if not block:  # the file was cut short under us
                    break
                async with asyncio.timeout(STALLED_CLIENT_SECONDS):
                    await resp.write(block)
                offset += len(block)
        finally:
            if fd >= 0:
                os.close(fd)
        await resp.write_eof()
        return resp


def _tail_lines(request: web.Request) -> int | None:
    raw = request.query.get("tail")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise JobsBadRequestError(f"tail: must be a whole number, not {raw!r}", field="tail") from None
    if not 1 <= value <= MAX_TAIL_LINES:
        raise JobsBadRequestError(f"tail: must be between 1 and {MAX_TAIL_LINES}", field="tail")
    return value


def _clip(wanted: slice, size: int) -> tuple[int, int]:
    """[start, end) of ``size`` bytes that a Range asks for, or 416."""
    start, stop = wanted.start, wanted.stop
    if start is not None and start < 0:  # the last -start bytes
        start = max(0, size + start)
    start = start or 0
    end = size if stop is None else min(stop, size)
    if start >= end:
        raise RangeNotSatisfiableError(f"Range: the log has {size} bytes")
    return start, end


def _open_regular(path: Path) -> tuple[int, int]:
    """(descriptor, size) of the regular file at ``path``, never through a symbolic link; (-1, 0) when missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1, 0
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JobsNotFoundError(f"{path.name} is a symbolic link: it is not served") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise JobsNotFoundError(f"{path.name} is not a regular file: it is not served")
    return fd, st.st_size


def _tail_offset(fd: int, size: int, lines: int) -> int:
    """Where the last ``lines`` lines of the file begin (a newline at its very end ends the last line)."""
    if size <= 0 or fd < 0:
        return 0
    end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size
    seen, pos = 0, end
    while pos > 0:
        step = min(CHUNK, pos)
        pos -= step
        block = os.pread(fd, step, pos)
        cut = len(block)
        while (cut := block.rfind(b"\n", 0, cut)) >= 0:
            seen += 1
            if seen == lines:
                return pos + cut + 1
    return 0


class _ChunkSink:
    """What :class:`zipfile.ZipFile` writes to, from a download thread: whole chunks go to the event loop's queue,
    at most ``QUEUED_CHUNKS`` ahead of the client. No ``tell``/``seek``: zipfile then writes a streamable archive
    (sizes after each entry's data)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None],
                 abort: threading.Event) -> None:
        self._loop, self._queue, self._abort = loop, queue, abort
        self._buf = bytearray()
        self._room = threading.Semaphore(QUEUED_CHUNKS)

    def write(self, data: bytes, /) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._send()
        return len(data)

    def flush(self) -> None:
        """Chunks go out when full; zipfile's flushes do not cut them short."""

    def close(self) -> None:
        """zipfile never closes a file it was given."""

    def finish(self) -> None:
        if self._buf:
            self._send()

    def taken(self) -> None:
        """The client has taken a chunk (called on the event loop)."""
        self._room.release()

    def _send(self) -> None:
        while not self._room.acquire(timeout=0.5):
            if self._abort.is_set():
                raise _Aborted
        if self._abort.is_set():
            raise _Aborted
        chunk = bytes(self._buf)
        self._buf.clear()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)


def _write_zip(job_dir: Path, top: str, sink: _ChunkSink) -> list[str]:
    """Write ``job_dir`` into ``sink`` as a ZIP (links are not followed); the entries left out, by relative path."""
    skipped: list[str] = []
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for root, dirs, files, root_fd in os.fwalk(job_dir):
            rel_root = Path(root).relative_to(job_dir)
            kept = []
            for name in sorted(dirs):
                if stat.S_ISLNK(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                    skipped.append((rel_root / name).as_posix())
                else:
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                rel = (rel_root / name).as_posix()
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
                except OSError:  # ELOOP: a symbolic link; or unreadable
                    skipped.append(rel)
                    continue
                with os.fdopen(fd, "rb") as f:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        skipped.append(rel)
                        continue
                    _add(zf, f, f"{top}/{rel}", st)
    return skipped


def _add(zf: zipfile.ZipFile, source: IO[bytes], name: str, st: os.stat_result) -> None:
    """One file into the ZIP: the bytes it had when opened (it may still be growing), a chunk at a time."""
    info = zipfile.ZipInfo(name, date_time=max(_ZIP_EPOCH, time.localtime(st.st_mtime)[:6]))
    info.compress_type = zipfile.ZIP_STORED if st.st_size > STORE_ABOVE else zipfile.ZIP_DEFLATED
    info.file_size = st.st_size
    info.external_attr = (stat.S_IMODE(st.st_mode) | stat.S_IFREG) << 16
    remaining = st.st_size
    with zf.open(info, "w") as out:
        while remaining > 0:
            block = source.read(min(CHUNK, remaining))
            if not block:
                break
            out.write(block)
            remaining -= len(block)
