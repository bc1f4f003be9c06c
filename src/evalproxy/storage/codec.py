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

A store may also hold zstd **dictionaries** (:class:`Dictionaries`), named by the id every frame written with one
carries, and one of them is the store's *current* one, which every process sharing the store writes with. The
current dictionary follows the store's answers:

* while the store has none, a process keeps the first :data:`TRAIN_ANSWERS` answers it compresses as samples and
  trains one off the event loop; it is used only if, on held-out samples, it stores them in :data:`DICT_MIN_GAIN`
  fewer bytes than both the current choice and zstd without a dictionary;
* one answer in :data:`CHECK_EVERY` is also compressed without the dictionary, off the loop (about 2.5 % of
  compression's CPU); over each :data:`WINDOW` answers a dictionary that saved less than :data:`DICT_MIN_GAIN` (a
  run that started with short answers and went on to long ones, a store reused for another model or task) makes
  the process collect fresh samples and train again: the new dictionary replaces the old if it beats it and plain
  zstd, the old one is dropped (answers written without) if plain zstd beats it, and a training that changes
  nothing makes the next one wait 2, 4, ... up to 64 windows;
* a choice is published compare-and-set on the current id it was judged against (the dictionary another process
  published meanwhile stays); after each check a process re-reads the store's current id, so every process sharing
  the store writes with the latest one within :data:`CHECK_EVERY` answers;
* every dictionary ever used stays in the store (entries written with it stay readable), at most :data:`MAX_DICTS`;
  then none is trained any more (said once in the log).

A reader that meets a frame of a dictionary it does not hold loads the store's dictionaries and decodes again
(:class:`MissingDictionary`), so every proxy and reader of a store, restarted or not, decodes what any of them wrote;
copying a store copies all its dictionaries first. On the realistic corpus a dictionary of the first 200 answers
stores 29 % fewer bytes; one of answers of another kind stores 7 % more than none (``bench/codec.py``).

Compressors are not thread-safe: each thread (the event loop's, the disk store's, a reader's) keeps its own. A
:class:`Dictionaries` is shared by those threads (the Redis store compresses small answers on the loop and large ones
in worker threads, and checks and trains in others): its bookkeeping is changed under its own lock, never while
compressing.
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
"""Answers a dictionary is trained on (four in five; the fifth judges it)."""
DICT_BYTES = 64 * 1024
DICT_MIN_GAIN = 0.05
"""The share of bytes a dictionary must save, against the other choices, to be written with (or to stay in use)."""
SAMPLE_MAX = 1 << 20
"""An answer larger than this is not kept as a training sample (the samples stay a few MB)."""
CHECK_EVERY = 40
"""One compressed answer in this many is also compressed without the dictionary written with (off the event loop):
the check costs 1/40 of compression's CPU."""
WINDOW = 1000
"""Answers over which the checks are summed before the dictionary written with is judged."""
MAX_DICTS = 8
"""Dictionaries one store may hold (every one ever used stays: its entries must stay readable); then no more are
trained."""
MAX_REST = 6
"""After a training that found nothing better, the next waits 2, 4, ... up to 2**MAX_REST windows."""

_local = threading.local()


class MissingDictionary(LookupError):
    """A frame was written with a dictionary the reader does not hold (yet): load the store's, then decode again."""

    def __init__(self, dict_id: int) -> None:
        super().__init__(f"compressed entry needs dictionary {dict_id}")
        self.dict_id = dict_id


class Dictionaries:
    """The dictionaries of one store that this process holds, the one it writes with (:attr:`current`), and the
    bookkeeping that keeps that one worth its CPU.

    Life of a store's dictionary, as one process sees it: while the store has none, the answers this process
    compresses are kept as samples; at :data:`TRAIN_ANSWERS` the store trains (:meth:`take_due`, :meth:`train`, off
    the event loop) and publishes what :meth:`train` chose, compare-and-set on the current id the choice was judged
    against. Meanwhile one answer in :data:`CHECK_EVERY` is left in :attr:`pending`; the store checks it off the loop
    (:meth:`run_check`: compressed once more without the dictionary) and then re-reads the store's current id (another
    process may have published one). Every :data:`WINDOW` answers the checks are summed: a dictionary that saved less
    than :data:`DICT_MIN_GAIN`, or none at all, makes this process collect fresh samples and train again."""

    def __init__(self) -> None:
        self.known: dict[int, zstandard.ZstdCompressionDict] = {}
        self.current: int | None = None
        self.checked = False
        """Whether the store was asked for its current dictionary (once, before this process writes)."""
        self.samples: list[bytes] = []
        self.collecting = False
        self.training = False
        self.due = False
        self.full = False
        """The store holds :data:`MAX_DICTS`: no new dictionary is trained (the current one may still be dropped)."""
        self.pending: tuple[bytes, int] | None = None
        """An answer (payload, its frame's size with the current dictionary) the store is to check off the loop."""
        self.base: int | None = None
        """The current id the samples were collected against (what a publication replaces)."""
        self._seen = self._checks = self._with = self._without = 0
        self._rest = 0  # windows to wait before collecting again, after a training that found nothing better
        self._failures = 0
        self._lock = threading.Lock()

    def add(self, data: bytes) -> int:
        """Hold a dictionary (its stored bytes); its id. ValueError for bytes that are no zstd dictionary (a damaged
        or planted entry of the store: zstd would take them as raw content, and frames written with them would
        name no dictionary, so no reader could decode them)."""
        d = zstandard.ZstdCompressionDict(data)
        dict_id = int(d.dict_id())
        if not dict_id:
            raise ValueError("not a zstd dictionary")
        if dict_id not in self.known:
            try:
                d.precompute_compress(level=LEVEL)
            except zstandard.ZstdError as exc:
                raise ValueError(f"damaged zstd dictionary {dict_id} ({exc})") from exc
            with self._lock:
                self.known.setdefault(dict_id, d)
        return dict_id

    def add_all(self, items: Iterable[bytes]) -> list[bytes]:
        """Hold each of these dictionaries; those held (one that is no dictionary is left out, logged)."""
        held = []
        for data in items:
            try:
                self.add(data)
            except ValueError as exc:
                log.warning("a compression dictionary of the store is left out: %s", exc)
                continue
            held.append(data)
        return held

    def use(self, data: bytes | None) -> None:
        """Write with the store's current dictionary (None or empty: the store has none)."""
        self.use_id(self.add(data) if data else None)

    def use_id(self, dict_id: int | None) -> None:
        """Write with the held dictionary ``dict_id`` (None: without). A change starts a new window; the first
        answer of a store without one starts the samples."""
        with self._lock:
            first, self.checked = not self.checked, True
            if first:
                self.current, self.collecting = dict_id, dict_id is None and not self.training
            elif dict_id != self.current:
                self.current, self.collecting, self.samples = dict_id, False, []
                self._seen = self._checks = self._with = self._without = 0

    def observe(self, payload: bytes, frame: int) -> None:
        """:func:`compress` kept ``payload`` as a frame of ``frame`` bytes: a sample, or one answer of the window
        (every :data:`CHECK_EVERY`-th left in :attr:`pending` for the store to check)."""
        if self.training or not self.checked:
            return
        with self._lock:
            if self.training:
                return
            self._seen += 1
            if self._seen % CHECK_EVERY == 0 and self.pending is None:
                self.pending = (payload, frame)
            if self.collecting:
                if len(payload) <= SAMPLE_MAX:
                    self.samples.append(payload)
                if len(self.samples) >= TRAIN_ANSWERS:
                    self.collecting, self.training, self.due, self.base = False, True, True, self.current

    def run_check(self) -> None:
        """Off the event loop: the pending answer compressed without the dictionary too, tallied; at the end of a
        window, judge the current choice (a dictionary saving less than :data:`DICT_MIN_GAIN`, or none, starts
        fresh samples)."""
        with self._lock:
            pending, self.pending, current = self.pending, None, self.current
            if pending is None or self.collecting or self.training:
                return  # (the store still reads its current id: while collecting, another process may publish one)
        without = len(_plain_compressor().compress(pending[0])) if current is not None else 0
        with self._lock:
            if current != self.current or self.collecting or self.training:
                return  # the choice changed meanwhile: this answer belongs to no window of it
            self._judge(pending[1] if current is not None else 0, without)

    def _judge(self, with_one: int, without_one: int) -> None:
        """One checked answer tallied (under the lock); at the end of a window the current choice judged."""
        self._with += with_one
        self._without += without_one
        self._checks += 1
        if self._checks * CHECK_EVERY < WINDOW:
            return
        with_, without = self._with, self._without
        self._seen = self._checks = self._with = self._without = 0
        if self._rest:
            self._rest -= 1
            return
        gain = 1 - with_ / without if without else 0.0
        if self.current is not None and gain >= DICT_MIN_GAIN:
            return
        if len(self.known) >= MAX_DICTS:
            self._set_full()  # no new one: a stale one may still be dropped
        if self.full and self.current is None:
            return
        if self.current is not None:
            log.info("the compression dictionary %d saves %.1f %% on the last answers: training another",
                     self.current, 100 * gain)
        self.collecting, self.samples = True, []

    def take_due(self) -> bool:
        """Whether training is due now (once: the caller starts it)."""
        with self._lock:
            due, self.due = self.due, False
        return due

    def train(self) -> bytes | None:
        """The store's next choice, judged on held-out samples (one in five; a dictionary is trained on the other
        four): a new dictionary's bytes if it stores them in :data:`DICT_MIN_GAIN` fewer bytes than both the current
        choice and zstd without a dictionary; ``b""`` (write without) if the current dictionary does not beat that
        by the margin; None to keep the current choice. A training that changes nothing makes the next one wait
        longer (2, 4, ... windows)."""
        with self._lock:
            taken, self.samples, base = self.samples, [], self.base
            known = self.known.get(base) if base is not None else None
        held_out = taken[::5]
        samples: list[bytes | bytearray | memoryview[int]] = [s for i, s in enumerate(taken) if i % 5]
        plain = sum(len(_plain_compressor().compress(s)) for s in held_out)
        now = plain
        if known is not None:
            with_current = zstandard.ZstdCompressor(level=LEVEL, dict_data=known)
            now = sum(len(with_current.compress(s)) for s in held_out)
        trained = None if self.full else _train(samples)
        if trained is not None:
            with_dict = zstandard.ZstdCompressor(level=LEVEL, dict_data=trained)
            used = sum(len(with_dict.compress(s)) for s in held_out)
            if used <= min(now, plain) * (1 - DICT_MIN_GAIN):
                with self._lock:
                    self._failures = 0
                return bytes(trained.as_bytes())
            log.info("a compression dictionary of the latest answers saves %.1f %% on the next ones: not used",
                     100 * (1 - used / max(min(now, plain), 1)))
        with self._lock:
            self._failures = min(self._failures + 1, MAX_REST)
            self._rest = 2**self._failures - 1
        if base is not None and now > plain * (1 - DICT_MIN_GAIN):
            log.info("the compression dictionary %d saves %.1f %% on the latest answers: answers are written "
                     "without one", base, 100 * (1 - now / max(plain, 1)))
            return b""
        return None

    def done_training(self, full: bool = False) -> None:
        """Training and publishing are over (``full``: the store refused a new dictionary, it holds enough)."""
        with self._lock:
            if full:
                self._set_full()
            self.training = False
            self._seen = self._checks = self._with = self._without = 0

    def _set_full(self) -> None:
        if not self.full:
            log.warning("the store holds %d compression dictionaries or more: no more are trained", MAX_DICTS)
        self.full = True

    def forget(self) -> None:
        """The store was cleared: it holds no dictionary now."""
        with self._lock:
            self.known, self.current, self.checked, self.samples, self.pending = {}, None, False, [], None
            self.collecting = self.training = self.due = self.full = False
            self._seen = self._checks = self._with = self._without = self._rest = self._failures = 0

    def _compressor(self) -> zstandard.ZstdCompressor:
        current = self.current
        key = ("c", current)
        c: zstandard.ZstdCompressor | None = getattr(_local, "cache", {}).get(key)
        if c is None:
            dict_data = self._held(current) if current is not None else None
            c = zstandard.ZstdCompressor(level=LEVEL, dict_data=dict_data, write_checksum=True, write_content_size=True)
            if current is None or dict_data is not None:  # (else forgotten meanwhile: this answer goes without)
                _cache()[key] = c
        return c

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        key = ("d", dict_id)
        d: zstandard.ZstdDecompressor | None = getattr(_local, "cache", {}).get(key)
        if d is None:
            dict_data = self._held(dict_id) if dict_id else None
            if dict_id and dict_data is None:
                raise MissingDictionary(dict_id)
            d = _cache()[key] = zstandard.ZstdDecompressor(dict_data=dict_data)
        return d

    def _held(self, dict_id: int) -> zstandard.ZstdCompressionDict | None:
        with self._lock:
            return self.known.get(dict_id)


def _cache() -> dict[tuple[str, int | None], zstandard.ZstdCompressor | zstandard.ZstdDecompressor]:
    """This thread's compressors and decompressors, by dictionary."""
    cache: dict[tuple[str, int | None], zstandard.ZstdCompressor | zstandard.ZstdDecompressor] | None = getattr(
        _local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    return cache


def _plain_compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor without a dictionary (what a check compares with)."""
    return _PLAIN._compressor()


def _train(samples: list[bytes | bytearray | memoryview[int]]) -> zstandard.ZstdCompressionDict | None:
    try:
        return zstandard.train_dictionary(DICT_BYTES, samples)
    except zstandard.ZstdError as exc:
        log.warning("no compression dictionary could be trained (%s): answers are compressed without", exc)
        return None


_PLAIN = Dictionaries()  # none: the codec of a caller without a store (tests, tools)


def dictionaries_of(items: Iterable[bytes]) -> Dictionaries:
    """A table holding the given dictionaries (a copy's source's, to check what it copies)."""
    table = Dictionaries()
    table.add_all(items)
    return table


def compress(payload: bytes, dicts: Dictionaries | None = None) -> bytes | None:
    """``EPZ1`` + the payload's zstd frame (with the store's dictionary, if it has one), or None when that would not
    be smaller than the payload kept as is."""
    if len(payload) < MIN_SIZE:
        return None
    frame = (dicts or _PLAIN)._compressor().compress(payload)
    if len(frame) + 16 >= len(payload):
        return None
    if dicts is not None:
        dicts.observe(payload, len(frame))
    return ZMAGIC + frame


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
