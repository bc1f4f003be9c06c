"""How a stored answer's bytes are compressed: one zstd frame behind a magic of its own.

An answer (:class:`~evalproxy.storage.base.StoredAnswer`) is first laid out as its *payload* (header length, header
JSON, body or events); the store keeps either

* ``EPZ1`` + a zstd frame of the payload (content size and zstd's own checksum in the frame): every answer worth
  compressing, written since issue 23; or
* ``EPA1`` + sha256(payload)[:8] + payload: an answer too small to gain from compression, and every answer written
  before (still read: a cache of an older version replays as it was).

Level :data:`LEVEL` was chosen by measuring ratio and CPU on the benchmarks' realistic corpus of answers (1-30 KB:
reasoning, tool calls, streams; ``bench/codec.py``, figures in ``bench/RESULTS.md``, issue 23). A frame is checked
before it is expanded: one that claims more than :data:`MAX_PAYLOAD` bytes, or does not say its size, is damaged,
never decompressed (a planted entry cannot make a reader allocate without bound).

Compressors are not thread-safe: each thread (the event loop's, the disk store's, a reader's) keeps its own.
"""

from __future__ import annotations

import threading

import zstandard

ZMAGIC = b"EPZ1"
LEVEL = 1
MIN_SIZE = 256
"""A payload shorter than this is kept as it is: a frame's own overhead eats what compression would save."""
MAX_PAYLOAD = 2**31
"""The largest payload a frame may expand to (an answer is bounded by ``max_answer_bytes``, 256 MiB by default)."""

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(payload: bytes) -> bytes | None:
    """``EPZ1`` + the payload's zstd frame, or None when that would not be smaller than the payload kept as is."""
    if len(payload) < MIN_SIZE:
        return None
    frame = _compressor().compress(payload)
    return ZMAGIC + frame if len(frame) + 16 < len(payload) else None


def payload_size(blob: bytes) -> int:
    """How large an entry's payload is (what decoding it handles), as its frame says; its length if uncompressed or
    unreadable."""
    if blob[:4] == ZMAGIC:
        try:
            return max(0, zstandard.frame_content_size(memoryview(blob)[len(ZMAGIC):]))
        except zstandard.ZstdError:
            return len(blob)
    return len(blob)


def decompress(blob: bytes) -> bytes:
    """The payload of an ``EPZ1`` entry; ValueError for a damaged or foreign one."""
    frame = memoryview(blob)[len(ZMAGIC):]
    try:
        size = zstandard.frame_content_size(frame)
        if size < 0 or size > MAX_PAYLOAD:
            raise ValueError(f"compressed entry claims {'no' if size < 0 else size} bytes")
        payload = _decompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ValueError(f"compressed entry is damaged ({exc})") from exc
    if len(payload) != size:
        raise ValueError("compressed entry is damaged (size mismatch)")
    return payload
