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

A store may also hold zstd **dictionaries** (:class:`Dictionaries`): trained on the first :data:`TRAIN_ANSWERS`
answers a process stores while the store has none, published in the store (the first one published wins; every
process sharing the store then writes with that one), and named by the id every frame written with it carries. A
reader that meets a frame of a dictionary it does not hold loads the store's dictionaries and decodes again
(:class:`MissingDictionary`), so every proxy and reader of a store, restarted or not, decodes what any of them wrote;
copying a store copies its dictionaries first. On the realistic corpus a dictionary of the first 200 answers stores
29 % fewer bytes (``bench/codec.py``).

Compressors are not thread-safe: each thread (the event loop's, the disk store's, a reader's) keeps its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import zstandard

log = logging.getLogger("evalproxy.storage")

ZMAGIC = b"EPZ1"
LEVEL = 1
MIN_SIZE = 256
"""A payload shorter than this is kept as it is: a frame's own overhead eats what compression would save."""
MAX_PAYLOAD = 2**31
"""The largest payload a frame may expand to (an answer is bounded by ``max_answer_bytes``, 256 MiB by default)."""

TRAIN_ANSWERS = 200
"""Answers a store's first dictionary is trained on."""
DICT_BYTES = 64 * 1024
DICT_MIN_GAIN = 0.05
"""The share of bytes a trained dictionary must save on held-out answers to be used."""
SAMPLE_MAX = 1 << 20
"""An answer larger than this is not kept as a training sample (the samples stay a few MB)."""

_local = threading.local()


class MissingDictionary(LookupError):
    """A frame was written with a dictionary the reader does not hold (yet): load the store's, then decode again."""

    def __init__(self, dict_id: int) -> None:
        super().__init__(f"compressed entry needs dictionary {dict_id}")
        self.dict_id = dict_id


class Dictionaries:
    """The dictionaries of one store that this process holds, the one it writes with, and its training samples."""

    def __init__(self) -> None:
        self.known: dict[int, zstandard.ZstdCompressionDict] = {}
        self.current: int | None = None
        self.checked = False
        """Whether the store was asked for its current dictionary (once, before this process writes)."""
        self.samples: list[bytes] = []
        self.training = False
        self.due = False

    def add(self, data: bytes) -> int:
        """Hold a dictionary (its stored bytes); its id."""
        d = zstandard.ZstdCompressionDict(data)
        d.precompute_compress(level=LEVEL)
        self.known[d.dict_id()] = d
        return int(d.dict_id())

    def use(self, data: bytes | None) -> None:
        """Write with the store's current dictionary (None: the store has none yet)."""
        self.checked = True
        if data:
            self.current = self.add(data)
            self.samples = []

    def offer(self, payload: bytes) -> None:
        """Keep ``payload`` as a training sample while no dictionary is in use; once there are enough, :attr:`due`
        says so (the store then trains, off the event loop, and publishes: :meth:`take_due`, :meth:`train`)."""
        if self.current is not None or self.training or not MIN_SIZE <= len(payload) <= SAMPLE_MAX:
            return
        self.samples.append(payload)
        if len(self.samples) >= TRAIN_ANSWERS:
            self.training = self.due = True

    def take_due(self) -> bool:
        """Whether training is due now (once: the caller starts it)."""
        due, self.due = self.due, False
        return due

    def train(self) -> bytes | None:
        """A dictionary of the samples, or None (it is not tried again) if zstd cannot make one or it does not
        measurably help: trained on four in five samples, it must store the fifth in at least
        :data:`DICT_MIN_GAIN` fewer bytes than level-``LEVEL`` zstd without it (a dictionary of answers unlike the
        run's later ones would only cost CPU)."""
        held_out = self.samples[::5]
        samples: list[bytes | bytearray | memoryview[int]] = [s for i, s in enumerate(self.samples) if i % 5]
        self.samples = []
        try:
            trained = zstandard.train_dictionary(DICT_BYTES, samples)
        except zstandard.ZstdError as exc:
            log.warning("no compression dictionary could be trained (%s): answers are compressed without", exc)
            return None
        plain = zstandard.ZstdCompressor(level=LEVEL)
        with_dict = zstandard.ZstdCompressor(level=LEVEL, dict_data=trained)
        without = sum(len(plain.compress(s)) for s in held_out)
        used = sum(len(with_dict.compress(s)) for s in held_out)
        if used > without * (1 - DICT_MIN_GAIN):
            log.info("a compression dictionary of the first answers saves %.1f %% on the next ones: not used",
                     100 * (1 - used / max(without, 1)))
            return None
        return bytes(trained.as_bytes())

    def forget(self) -> None:
        """The store was cleared: it holds no dictionary now."""
        self.known, self.current, self.checked, self.samples = {}, None, False, []
        self.training = self.due = False

    def _compressor(self) -> zstandard.ZstdCompressor:
        key = ("c", self.current)
        c: zstandard.ZstdCompressor | None = getattr(_local, "cache", {}).get(key)
        if c is None:
            if not hasattr(_local, "cache"):
                _local.cache = {}
            dict_data = self.known[self.current] if self.current is not None else None
            c = _local.cache[key] = zstandard.ZstdCompressor(level=LEVEL, dict_data=dict_data, write_checksum=True,
                                                              write_content_size=True)
        return c

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        key = ("d", dict_id)
        d: zstandard.ZstdDecompressor | None = getattr(_local, "cache", {}).get(key)
        if d is None:
            if dict_id and dict_id not in self.known:
                raise MissingDictionary(dict_id)
            if not hasattr(_local, "cache"):
                _local.cache = {}
            d = _local.cache[key] = zstandard.ZstdDecompressor(dict_data=self.known[dict_id] if dict_id else None)
        return d


_PLAIN = Dictionaries()  # none: the codec of a caller without a store (tests, tools)


def dictionaries_of(items: Iterable[bytes]) -> Dictionaries:
    """A table holding the given dictionaries (a copy's source's, to check what it copies)."""
    table = Dictionaries()
    for data in items:
        table.add(data)
    return table


def compress(payload: bytes, dicts: Dictionaries | None = None) -> bytes | None:
    """``EPZ1`` + the payload's zstd frame (with the store's dictionary, if it has one), or None when that would not
    be smaller than the payload kept as is."""
    if len(payload) < MIN_SIZE:
        return None
    if dicts is not None and dicts.checked:
        dicts.offer(payload)
    frame = (dicts or _PLAIN)._compressor().compress(payload)
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


def decompress(blob: bytes, dicts: Dictionaries | None = None) -> bytes:
    """The payload of an ``EPZ1`` entry; ValueError for a damaged or foreign one, :class:`MissingDictionary` for one
    written with a dictionary ``dicts`` does not hold."""
    frame = memoryview(blob)[len(ZMAGIC):]
    try:
        size = zstandard.frame_content_size(frame)
        if size < 0 or size > MAX_PAYLOAD:
            raise ValueError(f"compressed entry claims {'no' if size < 0 else size} bytes")
        dict_id = zstandard.get_frame_parameters(frame).dict_id
        payload = (dicts or _PLAIN)._decompressor(dict_id).decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ValueError(f"compressed entry is damaged ({exc})") from exc
    if len(payload) != size:
        raise ValueError("compressed entry is damaged (size mismatch)")
    return payload
