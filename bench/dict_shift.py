"""A store whose answers change kind: bytes and compression CPU per answer, the store's dictionary kept from the
first answers (as before) against one that follows the answers (storage/codec.py, after issue 23).

    python bench/dict_shift.py [--small 200] [--corpus 2000] [--repeat 3] [--store disk] [--store redis://...]

The run: ``--small`` of the benchmark upstream's own answers (bench/upstream.py: the short fixed chat answer and
20-event streams, what run.py's first scenarios store), then the answers of the realistic corpus (bench/corpus.py:
2000, or ``--corpus`` made by the same generator), in order. Each answer goes through what a store does with it
(``StoredAnswer.encode`` with the store's ``codec.Dictionaries``; the periodic check, training and publishing as
the disk store runs them, here in one thread and in order: training takes no answers' time). CPU is this process's
time per corpus answer (``time.process_time``, each answer's best of ``--repeat`` passes, the cases' passes
interleaved), checks included; training is reported apart (the store runs it in a thread of its own). Figures are
for all corpus answers and for the last 800 (once a dictionary of their kind is in use). ``--store`` writes the
same run through a real store, back to back (training then overlaps the answers written meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import zstandard
from corpus import DEFAULT, HERE, load
from upstream import BODY, CONTENT, DONE, FINISH, ROLE, USAGE

from evalproxy.storage import codec, open_store
from evalproxy.storage.base import StoredAnswer

TAIL = 800


def small_answers(n: int) -> list[StoredAnswer]:
    """What run.py's first scenarios store: the upstream's fixed chat answer, and a stream every fourth answer."""
    stream = [ROLE, *CONTENT[:20], FINISH, USAGE, DONE]
    return [StoredAnswer(200, {"content-type": "text/event-stream"}, events=stream, stored_at=1.7e9 + i) if i % 4 == 3
            else StoredAnswer(200, {"content-type": "application/json"}, body=BODY, stored_at=1.7e9 + i)
            for i in range(n)]


def corpus_answers(n: int) -> list[StoredAnswer]:
    """The realistic corpus (``n`` answers other than 2000: made once, in a file of its own)."""
    out = []
    for i, e in enumerate(load(DEFAULT if n == 2000 else HERE / "results" / f"corpus-{n}.jsonl", n)):
        if e["kind"] == "stream":
            out.append(StoredAnswer(200, {"content-type": "text/event-stream"},
                                    events=[x.encode() for x in e["events"]], stored_at=1.8e9 + i))
        else:
            out.append(StoredAnswer(200, {"content-type": "application/json"}, body=e["body"].encode(),
                                    stored_at=1.8e9 + i))
    return out


def run(answers: list[StoredAnswer], follow: bool) -> dict[str, Any]:
    """Write ``answers`` through one store's dictionaries; (bytes per answer, CPU per answer, training CPU)."""
    saved = codec.CHECK_EVERY, codec.WINDOW
    if not follow:  # as before: no check, no judgement, the first published dictionary kept
        codec.CHECK_EVERY = codec.WINDOW = 10**12
    try:
        dicts, sizes, cpu, training, checks, switches = codec.Dictionaries(), [], [], 0.0, 0.0, []
        dicts.use(None)
        for i, answer in enumerate(answers):
            t0 = time.process_time()
            blob = answer.encode(dicts)
            if dicts.pending is not None:
                t1 = time.process_time()
                dicts.run_check()
                checks += time.process_time() - t1
            cpu.append(time.process_time() - t0)
            sizes.append(len(blob))
            if dicts.take_due():
                t0 = time.process_time()
                data = dicts.train()
                if data is not None:
                    dicts.use(data)
                    switches.append(i)
                dicts.done_training()
                training += time.process_time() - t0
        return {"sizes": sizes, "cpu": cpu, "training": training, "checks": checks, "switches": switches}
    finally:
        codec.CHECK_EVERY, codec.WINDOW = saved


async def through_store(location: str, small: list[StoredAnswer], corpus: list[StoredAnswer]) -> None:
    """The same run through a real store (a cache dir, or a Redis URL): the corpus answers' stored bytes, read back
    from the store, and the dictionaries it ends up holding."""
    store = open_store(location)
    try:
        for i, answer in enumerate(small + corpus):
            await store.finish(f"{i:05d}", 0, owner="bench", answer=answer, pair=None)
        stored = dict([x async for chunk in store.raw_answers() for x in chunk])
        sizes = [len(stored[f"{len(small) + i:05d}:0"]) for i in range(len(corpus))]
        raw = [a.size for a in corpus]
        ids = [int(zstandard.get_frame_parameters(b[4:]).dict_id) if b[:4] == codec.ZMAGIC else -1
               for b in (stored[f"{i:05d}:0"] for i in range(len(small), len(small) + len(corpus)))]
        changes = [i for i in range(1, len(ids)) if ids[i] not in (ids[i - 1], -1) and ids[i] not in ids[:i]]
        print(f"through the store at {location}: new dictionaries from corpus answers {changes}; stored/raw of "
              f"the corpus answers {sum(sizes) / sum(raw):.3f} "
              f"(last {TAIL}: {sum(sizes[-TAIL:]) / sum(raw[-TAIL:]):.3f}), "
              f"{len(await store.dictionaries())} dictionaries held")
    finally:
        await store.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--corpus", type=int, default=2000, help="corpus answers (the standard corpus is 2000)")
    ap.add_argument("--store", action="append", default=[], help="also write the run through this store (a cache "
                    "dir, a redis:// URL, or 'disk' for a fresh temporary one); repeatable")
    args = ap.parse_args()
    small, corpus = small_answers(args.small), corpus_answers(args.corpus)
    raw = [a.size for a in corpus]
    print(f"{len(small)} small answers, then {len(corpus)} corpus answers ({sum(raw) / len(raw):.0f} B mean)")
    print("| store's dictionary | B/answer (all) | stored/raw (all) | B/answer (last 800) | stored/raw (last 800) "
          "| JSON stored/raw (last 800) | compress us/answer (all) | (last 800) | checks' share of it "
          "| training CPU ms | dictionary changes at answer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    cases = [("kept from the first answers (before)", small + corpus, True, False),
             ("follows the answers (after)", small + corpus, True, True),
             ("none (reference)", corpus, False, False),
             ("of the corpus's own first 200 (reference)", corpus, True, False)]
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):  # passes of every case in turn: the machine's load moves them alike
        for name, answers, with_dicts, follow in cases:
            if with_dicts:
                got = run(answers, follow)
            else:
                t = [(time.process_time(), a.encode(), time.process_time()) for a in answers]
                got = {"sizes": [len(b) for _, b, _ in t], "cpu": [t1 - t0 for t0, _, t1 in t], "training": 0.0,
                       "checks": 0.0, "switches": []}
            if name in results:  # each answer's best pass; each whole's for the one-off costs
                prev = results[name]
                got["cpu"] = [min(a, b) for a, b in zip(got["cpu"], prev["cpu"], strict=True)]
                for k in ("training", "checks"):
                    got[k] = min(got[k], prev[k])
            results[name] = got
    for name, answers, _, _ in cases:
        best = results[name]
        sizes, cpu = best["sizes"][-len(corpus):], best["cpu"][-len(corpus):]
        at = ", ".join(str(s - len(answers) + len(corpus)) for s in best["switches"])
        json_tail = [(s, a.size) for s, a in zip(sizes[-TAIL:], corpus[-TAIL:], strict=True) if a.body is not None]
        print(f"| {name} | {sum(sizes) / len(sizes):.0f} | {sum(sizes) / sum(raw):.3f} "
              f"| {sum(sizes[-TAIL:]) / TAIL:.0f} | {sum(sizes[-TAIL:]) / sum(raw[-TAIL:]):.3f} "
              f"| {sum(s for s, _ in json_tail) / sum(r for _, r in json_tail):.3f} "
              f"| {sum(cpu) / len(cpu) * 1e6:.1f} | {sum(cpu[-TAIL:]) / TAIL * 1e6:.1f} "
              f"| {best['checks'] / sum(best['cpu']):.1%} | {best['training'] * 1e3:.0f} | {at} |",
              flush=True)

    for location in args.store:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(through_store(tmp if location == "disk" else location, small, corpus))


if __name__ == "__main__":
    main()
