"""Answers stored compressed (zstd): what the codec writes, what it refuses, and entries of older versions."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
import zstandard

from evalproxy.storage import codec, copy_store, open_store
from evalproxy.storage.base import MAGIC, StoredAnswer
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server
from tests.waiting import wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest

TEXT = b" ".join(b"step %d: the premise gives %d, so the total is %d." % (i, i * 7, i * 11) for i in range(400))
EVENTS = [b'data: {"choices":[{"index":0,"delta":{"content":"tok%d "}}]}\n\n' % i for i in range(300)]


def legacy(answer: StoredAnswer) -> bytes:
    """An answer as versions before issue 23 wrote it: ``EPA1`` + sha256[:8] + the payload, uncompressed."""
    header: dict[str, object] = {"status": answer.status, "headers": answer.headers, "stored_at": answer.stored_at}
    if answer.events is not None:
        header["events"] = [len(e) for e in answer.events]
    h = orjson.dumps(header)
    payload = struct.pack(">I", len(h)) + h + (b"".join(answer.events) if answer.events is not None
                                                else answer.body or b"")
    return MAGIC + hashlib.sha256(payload).digest()[:8] + payload


class TestEncode:
    @pytest.mark.parametrize("answer", [StoredAnswer(200, {"content-type": "application/json"}, body=TEXT),
                                        StoredAnswer(200, {}, events=[*EVENTS, b"", b"data: [DONE]\n\n"])],
                             ids=["body", "stream"])
    def test_compressible_answers_are_stored_compressed_and_read_back_exactly(self, answer: StoredAnswer) -> None:
        """A compressible body or event sequence is kept as one zstd frame, far smaller, and decodes to the same
        bytes, event boundaries included."""
        blob = answer.encode()
        raw = len(answer.body or b"") + sum(len(e) for e in answer.events or [])
        assert blob[:4] == codec.ZMAGIC and len(blob) < raw / 3
        back = StoredAnswer.decode(blob)
        assert (back.status, back.headers, back.body, back.events) == (answer.status, answer.headers, answer.body,
                                                                       answer.events)

    @pytest.mark.parametrize("body", [b'{"x": 1}', random.Random(0).randbytes(5000)], ids=["tiny", "random"])
    def test_what_compression_cannot_shrink_is_kept_as_it_is(self, body: bytes) -> None:
        """A tiny or incompressible answer is stored in the uncompressed format, and reads back."""
        blob = StoredAnswer(200, {}, body=body).encode()
        assert blob[:4] == MAGIC and StoredAnswer.decode(blob).body == body

    @pytest.mark.parametrize("answer", [StoredAnswer(201, {"a": "b"}, body=TEXT),
                                        StoredAnswer(200, {}, events=EVENTS)], ids=["body", "stream"])
    def test_entries_written_before_compression_stay_readable(self, answer: StoredAnswer) -> None:
        """An uncompressed entry of an older version decodes to its answer."""
        back = StoredAnswer.decode(legacy(answer))
        assert (back.status, back.headers, back.body, back.events) == (answer.status, answer.headers, answer.body,
                                                                       answer.events)


class TestDamage:
    @pytest.mark.parametrize("damage", [
        lambda b: b[:-1],                                   # truncated
        lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:],     # one bit flipped inside the frame
        lambda b: b + b"junk",                              # bytes appended after the frame
        lambda b: b[:4],                                    # the magic alone
    ], ids=["truncated", "flipped", "appended", "magic-only"])
    def test_a_damaged_compressed_entry_never_decodes(self, damage: object) -> None:
        """Truncated, altered or extended compressed bytes raise ValueError, never a wrong answer."""
        blob = StoredAnswer(200, {}, body=TEXT).encode()
        with pytest.raises(ValueError):
            StoredAnswer.decode(damage(blob))  # type: ignore[operator]

    def test_a_frame_that_hides_its_size_is_refused(self) -> None:
        """A frame without its content size (not one the store writes) is refused before it is expanded."""
        frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 10_000)
        with pytest.raises(ValueError, match="claims no bytes"):
            StoredAnswer.decode(codec.ZMAGIC + frame)

    def test_a_frame_that_claims_too_much_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A frame claiming more than MAX_PAYLOAD is refused unread (a planted entry cannot exhaust memory)."""
        blob = StoredAnswer(200, {}, body=TEXT).encode()
        monkeypatch.setattr(codec, "MAX_PAYLOAD", 1000)
        with pytest.raises(ValueError, match="claims"):
            StoredAnswer.decode(blob)

    def test_a_frame_of_garbage_json_is_damaged(self) -> None:
        """A well-formed frame whose payload is not an answer raises ValueError, not a parser's own error."""
        with pytest.raises(ValueError):
            StoredAnswer.decode(codec.ZMAGIC + zstandard.ZstdCompressor().compress(b"\x00\x00\x00\x05nope!" * 50))


@needs_redis
class TestThroughStores:
    async def test_compressed_and_legacy_entries_read_and_copy_through_both_backends(
            self, tmp_path: Path, redis_server: RedisServer) -> None:
        """A cache holding a compressed answer, a compressed stream and an entry of an older version replays all
        three from disk, copies to Redis and back (`cache copy`), and every store reads them whole; claims replay
        them byte for byte."""
        answers = {"a" * 64: StoredAnswer(200, {"x": "1"}, body=TEXT),
                   "b" * 64: StoredAnswer(200, {}, events=[*EVENTS, b"data: [DONE]\n\n"])}
        old = StoredAnswer(200, {}, body=TEXT[:3000])
        disk = await asyncio.to_thread(open_store, tmp_path / "one")
        redis = open_store(redis_server.url)
        back = await asyncio.to_thread(open_store, tmp_path / "two")
        try:
            for key, answer in answers.items():
                await disk.finish(key, 0, owner="o", answer=answer, pair=None)
            await disk.put_raw_answers([(f"{'c' * 64}:0", legacy(old))])
            everything = {**answers, "c" * 64: old}
            assert (await copy_store(disk, redis))["answers"] == 3
            assert (await copy_store(redis, back))["answers"] == 3
            for store in (disk, redis, back):
                got = await store.get_answers([(k, 0) for k in everything])
                assert [(g.body, g.events) if g else None for g in got] == [(a.body, a.events)
                                                                            for a in everything.values()]
                for key, answer in everything.items():
                    claim = await store.claim(key, "r", sampled=False, reuse=True, owner="p")
                    assert claim.answer is not None and claim.answer.size == answer.size
            raw = dict([x async for chunk in redis.raw_answers() for x in chunk])
            assert sorted(blob[:4] for blob in raw.values()) == [MAGIC, codec.ZMAGIC, codec.ZMAGIC]
        finally:
            for store in (disk, redis, back):
                await store.aclose()


WORDS = ("the model checks each step of the proof and then writes the answer so we compute the sum again carefully "
         "because a premise may be wrong therefore a result follows from two facts and one rule").split()


def answer(i: int) -> StoredAnswer:
    """An answer of a few KB of varied text (training needs samples that differ)."""
    rng = random.Random(i)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(300, 700)))
    return StoredAnswer(200, {"content-type": "application/json"},
                        body=b'{"choices": [{"message": {"content": "' + text.encode() + b'"}}], "n": %d}' % i)


def dict_id(blob: bytes) -> int:
    return int(zstandard.get_frame_parameters(blob[4:]).dict_id) if blob[:4] == codec.ZMAGIC else -1


@pytest.fixture
def small_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "TRAIN_ANSWERS", 40)
    monkeypatch.setattr(codec, "DICT_BYTES", 16 * 1024)


@needs_redis
@pytest.mark.usefixtures("small_training")
class TestDictionaries:
    def test_a_dictionary_is_kept_only_where_it_helps(self) -> None:
        """Trained on answers of one kind it stores the next ones in fewer bytes and is kept; trained on answers
        that share nothing (random bytes) it would not help, and none is used."""
        alike = codec.Dictionaries()
        alike.samples = [answer(i).body for i in range(60)]
        assert alike.train() is not None
        rng = random.Random(7)
        unalike = codec.Dictionaries()
        unalike.samples = [rng.randbytes(2048) for _ in range(60)]
        assert unalike.train() is None

    async def test_disk_trains_publishes_and_every_reader_decodes(self, tmp_path: Path,
                                                                  redis_server: RedisServer) -> None:
        """After the first answers the disk store trains a dictionary, keeps it in the store and writes with it;
        the store reopened (a restart), and a Redis store it is copied to, decode every answer."""
        store = await asyncio.to_thread(open_store, tmp_path)
        try:
            for i in range(40):
                await store.finish(f"k{i}", 0, owner="o", answer=answer(i), pair=None)
            await wait_until(lambda: store.sync.dicts.table.current is not None, what="a trained dictionary")  # type: ignore[attr-defined]
            for i in range(40, 50):
                await store.finish(f"k{i}", 0, owner="o", answer=answer(i), pair=None)
            current = store.sync.dicts.table.current  # type: ignore[attr-defined]
        finally:
            await store.aclose()
        reopened = await asyncio.to_thread(open_store, tmp_path)
        redis = open_store(redis_server.url)
        try:
            raw = dict([x async for chunk in reopened.raw_answers() for x in chunk])
            assert {dict_id(raw[f"k{i}:0"]) for i in range(40, 50)} == {current}
            assert len(await reopened.dictionaries()) == 1
            await copy_store(reopened, redis)
            for store in (reopened, redis):
                got = await store.get_answers([(f"k{i}", 0) for i in range(50)])
                assert [g.body if g else None for g in got] == [answer(i).body for i in range(50)]
        finally:
            await reopened.aclose()
            await redis.aclose()

    async def test_proxies_on_one_redis_share_one_dictionary(self, redis_server: RedisServer) -> None:
        """Two processes' stores on one server train at once; one dictionary is published and both write with
        it; a fresh reader decodes every answer either wrote."""
        a, b = open_store(redis_server.url), open_store(redis_server.url)
        try:
            await asyncio.gather(*(s.finish(f"{n}{i}", 0, owner=n, answer=answer(i + (0 if n == "a" else 100)),
                                            pair=None)
                                   for i in range(40) for n, s in (("a", a), ("b", b))))
            await wait_until(lambda: a.dicts.table.current is not None and b.dicts.table.current is not None,  # type: ignore[attr-defined]
                             what="both stores writing with a dictionary")
            assert a.dicts.table.current == b.dicts.table.current  # type: ignore[attr-defined]
            await asyncio.gather(*(s.finish(f"{n}{i}", 0, owner=n, answer=answer(i + 200), pair=None)
                                   for i in range(40, 45) for n, s in (("a", a), ("b", b))))
        finally:
            await a.aclose()
            await b.aclose()
        reader = open_store(redis_server.url)
        try:
            keys = [(f"{n}{i}", 0) for n in "ab" for i in range(45)]
            got = await reader.get_answers(keys)
            assert all(g is not None for g in got) and len(await reader.dictionaries()) == 1
            raw = dict([x async for chunk in reader.raw_answers() for x in chunk])
            assert {dict_id(raw[f"{n}{i}:0"]) for n in "ab" for i in range(40, 45)} == {a.dicts.table.current}  # type: ignore[attr-defined]
        finally:
            await reader.aclose()


OTHER = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore "
         "magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip").split()
THIRD = ("quantum lattice photon boson spectra entropy manifold tensor kernel vector scalar gradient flux vortex "
         "plasma isotope neutron catalyst polymer enzyme").split()


def small(i: int) -> StoredAnswer:
    """A short chat completion like the bench's (~350 bytes: mostly the JSON around a few words)."""
    rng = random.Random(-i)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))).encode()
    body = (b'{"id":"chatcmpl-%d","object":"chat.completion","created":%d,"model":"bench","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"%s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,'
            b'"completion_tokens":%d,"total_tokens":%d}}' % (i, 1_700_000_000 + i, words, i % 50, i % 30, i % 80))
    return StoredAnswer(200, {"content-type": "application/json"}, body=body)


def prose(i: int, words: list[str] = OTHER) -> StoredAnswer:
    """A long answer of another kind: a few KB of text from another vocabulary."""
    rng = random.Random(i)
    text = " ".join(rng.choice(words) for _ in range(rng.randint(300, 700)))
    return StoredAnswer(200, {"content-type": "application/json"},
                        body=b'{"choices": [{"message": {"content": "' + text.encode() + b'"}}], "n": %d}' % i)


@pytest.fixture
def following(monkeypatch: pytest.MonkeyPatch, small_training: None) -> None:
    """Checks every 4th answer and judges every 40, so that a test's few hundred answers see several windows."""
    monkeypatch.setattr(codec, "CHECK_EVERY", 4)
    monkeypatch.setattr(codec, "WINDOW", 40)


def table_of(store: Any) -> codec.Dictionaries:
    """The dictionaries a store of either backend writes with."""
    return store.sync.dicts.table if hasattr(store, "sync") else store.dicts.table  # type: ignore[no-any-return]


async def write_until(store: Any, tag: str, make: Callable[[int], StoredAnswer], done: Callable[[], bool],
                      start: int = 0, cap: int = 800) -> int:
    """Write answers ``make(start)``, ... under keys ``<tag><i>`` until ``done()``; the next index."""
    i = start
    while not done() and i < start + cap:
        await store.finish(f"{tag}{i}", 0, owner="o", answer=make(i), pair=None)
        i += 1
    await wait_until(done, what=f"the dictionary change while writing {tag} answers")
    return i


async def two_kinds(store: Any, t: codec.Dictionaries) -> tuple[int, int | None, int]:
    """Short answers until the store has a dictionary, then prose until it has another: (how many short answers,
    the first dictionary's id, how many prose answers)."""
    n_small = await write_until(store, "s", small, lambda: t.current is not None)
    first = t.current
    return n_small, first, await write_until(store, "p", prose, lambda: t.current not in (None, first))


async def open_backend(backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str = "store") -> Any:
    if backend == "disk":
        return await asyncio.to_thread(open_store, tmp_path / name)
    server: RedisServer = request.getfixturevalue("redis_server")
    return open_store(server.url)


async def publish(store: Any, judged: int | None, data: bytes) -> bool:
    """Publish ``data`` as the store's current dictionary in place of ``judged`` (either backend); whether the
    bound refused it."""
    if hasattr(store, "sync"):
        return await asyncio.to_thread(store.sync.dicts.publish, judged, data)
    return await store.dicts.publish(judged, data)  # type: ignore[no-any-return]


BACKENDS = ["disk", pytest.param("redis", marks=needs_redis)]


@pytest.mark.usefixtures("following")
class TestDictionaryFollowsAnswers:
    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_answers_of_a_new_kind_get_a_dictionary_of_their_own(
            self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        """A store that trained its dictionary on short answers and then writes long answers of another kind writes
        the later ones with a dictionary trained on their kind, in fewer bytes than the first dictionary gives;
        entries of both dictionaries decode after a restart and after `cache copy`, and replay byte for byte."""
        store = await open_backend(backend, tmp_path, request)
        t = table_of(store)
        try:
            n_small, first, n_prose = await two_kinds(store, t)
            second = t.current
            for i in range(n_prose, n_prose + 10):
                await store.finish(f"p{i}", 0, owner="o", answer=prose(i), pair=None)
            raw = dict([x async for chunk in store.raw_answers() for x in chunk])
            dicts = await store.dictionaries()
        finally:
            await store.aclose()
        later = range(n_prose, n_prose + 10)
        assert {dict_id(raw[f"p{i}:0"]) for i in later} == {second}
        with_first = codec.dictionaries_of(dicts)
        with_first.use_id(first)
        assert sum(len(raw[f"p{i}:0"]) for i in later) < 0.9 * sum(len(prose(i).encode(with_first)) for i in later)
        assert len(dicts) == 2 and dict_id(raw["p0:0"]) == first  # the first one's entries stay
        everything = {f"s{i}": small(i) for i in range(n_small)} | {f"p{i}": prose(i) for i in range(n_prose + 10)}
        again = await open_backend(backend, tmp_path, request)
        copy = await asyncio.to_thread(open_store, tmp_path / "copy")
        try:
            assert (await copy_store(again, copy))["answers"] == len(everything)
            assert len(await copy.dictionaries()) == 2
            for s in (again, copy):
                got = await s.get_answers([(k, 0) for k in everything])
                assert [g.body if g else None for g in got] == [a.body for a in everything.values()]
                for key in ("s0", f"p{n_prose + 9}"):
                    claim = await s.claim(key, "r", sampled=False, reuse=True, owner="x")
                    assert claim.answer is not None and claim.answer.body == everything[key].body
        finally:
            await again.aclose()
            await copy.aclose()

    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_stores_sharing_a_backing_store_agree_and_publishing_is_compare_and_set(
            self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        """When one store replaces the shared dictionary, another store on the same directory or server switches to
        it within a check's worth of answers; a publication judged against a dictionary that is no longer current
        is refused, and both keep writing with the one published."""
        a = await open_backend(backend, tmp_path, request)
        b = await open_backend(backend, tmp_path, request)
        ta, tb = table_of(a), table_of(b)
        try:
            await write_until(a, "s", small, lambda: ta.current is not None)
            first = ta.current
            for i in range(codec.CHECK_EVERY):
                await b.finish(f"b-first{i}", 0, owner="b", answer=small(10_000 + i), pair=None)
            await wait_until(lambda: tb.current == first, what="the other store taking the first dictionary")
            await write_until(a, "p", prose, lambda: ta.current not in (None, first))
            second = ta.current
            for i in range(codec.CHECK_EVERY):
                await b.finish(f"b{i}", 0, owner="b", answer=prose(20_000 + i), pair=None)
            await wait_until(lambda: tb.current == second, what="the other store switching")
            stale = zstandard.train_dictionary(16 * 1024, [prose(i, THIRD).body or b"" for i in range(40)])
            await publish(b, first, stale.as_bytes())
            await publish(b, first, b"")
            assert (ta.current, tb.current) == (second, second)
            assert len(await a.dictionaries()) == 2
            await a.finish("a-last", 0, owner="a", answer=prose(30_000), pair=None)
            await b.finish("b-last", 0, owner="b", answer=prose(30_001), pair=None)
            raw = dict([x async for chunk in a.raw_answers() for x in chunk])
            assert dict_id(raw["a-last:0"]) == dict_id(raw["b-last:0"]) == second
        finally:
            await a.aclose()
            await b.aclose()

    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_the_number_of_dictionaries_is_bounded(self, backend: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
        """A store holding the bound of dictionaries trains no more (said once in the log): answers of a third kind
        are written without a dictionary rather than with an unfit one, and entries of every dictionary decode."""
        monkeypatch.setattr(codec, "MAX_DICTS", 2)
        store = await open_backend(backend, tmp_path, request)
        t = table_of(store)
        try:
            n_small, _, n_prose = await two_kinds(store, t)
            n_third = await write_until(store, "t", lambda i: prose(i, THIRD), lambda: t.current is None)
            for i in range(n_third, n_third + 200):
                await store.finish(f"t{i}", 0, owner="o", answer=prose(i, THIRD), pair=None)
            assert t.current is None and len(await store.dictionaries()) == 2
            another = zstandard.train_dictionary(16 * 1024, [prose(i, THIRD).body or b"" for i in range(40)])
            assert await publish(store, None, another.as_bytes())  # refused by the store itself
            assert len(await store.dictionaries()) == 2
            raw = dict([x async for chunk in store.raw_answers() for x in chunk])
            assert dict_id(raw[f"t{n_third + 199}:0"]) == 0
            everything = ({f"s{i}": small(i) for i in range(n_small)} | {f"p{i}": prose(i) for i in range(n_prose)}
                          | {f"t{i}": prose(i, THIRD) for i in range(n_third + 200)})
            got = await store.get_answers([(k, 0) for k in everything])
            assert [g.body if g else None for g in got] == [a.body for a in everything.values()]
        finally:
            await store.aclose()
        assert sum("no more are trained" in r.getMessage() for r in caplog.records) == 1

    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_a_planted_dictionary_is_never_written_with(self, backend: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest,
                                                              caplog: pytest.LogCaptureFixture) -> None:
        """Bytes that are no zstd dictionary, planted in the store as its current one (under id 0, the id zstd gives
        raw content), are left out (logged): the store writes without them, and what it writes reads back."""
        planted = b"not a dictionary " * 20
        if backend == "disk":
            store = await open_backend(backend, tmp_path, request)
            await store.aclose()
            db = sqlite3.connect(tmp_path / "store" / "responses" / "cache.db")
            with db:
                db.execute("INSERT INTO evalproxy_dicts VALUES (0, ?)", (planted,))
                db.execute("INSERT INTO evalproxy_dict_current VALUES (0, 0)")
            db.close()
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            client = aredis.Redis.from_url(server.url)
            await client.hset("evalproxy:dicts", "0", planted)
            await client.set("evalproxy:dict", "0")
            await client.aclose()
        store = await open_backend(backend, tmp_path, request)
        try:
            await store.finish("k", 0, owner="o", answer=prose(1), pair=None)
            assert table_of(store).current is None
            raw = dict([x async for chunk in store.raw_answers() for x in chunk])
            assert dict_id(raw["k:0"]) == 0
            got = await store.get_answers([("k", 0)])
            assert got[0] is not None and got[0].body == prose(1).body
        finally:
            await store.aclose()
        assert any("left out" in r.getMessage() for r in caplog.records)


class TestSharedBetweenThreads:
    def test_answers_compressed_from_many_threads_are_each_counted_once(self) -> None:
        """One table used by four threads compressing at once and a fifth running checks (as the Redis store
        compresses small answers on the loop and large ones in worker threads): every answer is counted once,
        training falls due exactly once, at exactly its number of samples, and every frame decodes to its answer."""
        import sys
        import threading

        dicts = codec.Dictionaries()
        dicts.use(None)
        payloads = [TEXT[i % 97:] + b"%d" % i for i in range(codec.TRAIN_ANSWERS - 4)]
        frames: list[tuple[bytes, bytes]] = []
        errors: list[BaseException] = []
        due = []
        start = threading.Barrier(5)

        def compress(part: list[bytes]) -> None:
            start.wait()
            try:
                for p in part:
                    frame = codec.compress(p, dicts)
                    assert frame is not None
                    frames.append((p, frame))
                    if dicts.take_due():
                        due.append(1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        def checks() -> None:
            start.wait()
            for _ in range(300):
                dicts.run_check()
                dicts.use_id(None)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes: races show
        try:
            parts = [payloads[i::4] for i in range(4)]
            threads = [threading.Thread(target=compress, args=(p,)) for p in parts] + [threading.Thread(target=checks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
            # the last few answers: training falls due at exactly TRAIN_ANSWERS samples
            for p in [TEXT + b"%d" % i for i in range(4)]:
                codec.compress(p, dicts)
                due.extend([1] if dicts.take_due() else [])
        finally:
            sys.setswitchinterval(interval)
        assert len(frames) == len(payloads)
        assert due == [1] and dicts.training and len(dicts.samples) == codec.TRAIN_ANSWERS
        assert all(codec.decompress(f, dicts) == p for p, f in frames)
