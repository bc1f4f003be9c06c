"""Ratio and CPU of compressing stored answers, on the realistic corpus (bench/corpus.py): zstd levels, with and
without a dictionary trained on the run's first answers. How storage/codec.py's level was chosen (issue 23).

    python bench/codec.py [--levels 1,3,6,9] [--train 200] [--dict-kb 64] [--repeat 3]

Each answer is laid out as the store lays it out (header + body or events) and compressed alone, as the store does.
A dictionary is trained (``zstandard.train_dictionary``) on the first ``--train`` answers and measured on the others
only, as a proxy would use one trained on a run's first answers. CPU is this process's CPU time per answer
(``time.process_time``), the best of ``--repeat`` passes; ratios are compressed bytes / raw bytes over the set.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
import zstandard
from corpus import load, raw_bytes


def payload(entry: dict[str, Any]) -> bytes:
    """The bytes storage/base.py's StoredAnswer.encode compresses: header length, header JSON, body (or events)."""
    header: dict[str, Any] = {"status": 200, "headers": {"content-type": "application/json"}, "stored_at": 1.7e9}
    if entry["kind"] == "stream":
        header["events"] = [len(e.encode()) for e in entry["events"]]
    h = orjson.dumps(header)
    return struct.pack(">I", len(h)) + h + raw_bytes(entry)


def timed(fn: Callable[[bytes], bytes], items: list[bytes], repeat: int) -> tuple[float, list[bytes]]:
    """(best CPU seconds per item over ``repeat`` passes, the outputs of the last pass)."""
    best, out = float("inf"), []
    for _ in range(repeat):
        t0 = time.process_time()
        out = [fn(x) for x in items]
        best = min(best, (time.process_time() - t0) / len(items))
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,3,6,9")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--dict-kb", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    entries = load()
    items = [payload(e) for e in entries]
    train, test = items[: args.train], items[args.train :]
    kinds = [e["kind"] for e in entries[args.train :]]
    raw = sum(map(len, test))
    print(f"corpus: {len(entries)} answers; measured on {len(test)} ({raw / len(test) / 1024:.1f} KB mean payload), "
          f"dictionary trained on the first {len(train)}")
    dictionary = zstandard.train_dictionary(args.dict_kb * 1024, train)
    print("| codec | ratio (all) | ratio (JSON) | ratio (streams) | compress us/answer | decompress us/answer |")
    print("|---|---:|---:|---:|---:|---:|")
    for level in [int(x) for x in args.levels.split(",")]:
        for dict_data in (None, dictionary):
            c = zstandard.ZstdCompressor(level=level, dict_data=dict_data, write_checksum=True)
            d = zstandard.ZstdDecompressor(dict_data=dict_data)
            t_c, frames = timed(c.compress, test, args.repeat)
            t_d, back = timed(d.decompress, frames, args.repeat)
            assert back == test
            by = {k: (sum(len(f) for f, kk in zip(frames, kinds, strict=True) if kk == k),
                      sum(len(x) for x, kk in zip(test, kinds, strict=True) if kk == k)) for k in ("json", "stream")}
            name = f"zstd {level}" + (f" + {args.dict_kb} KB dictionary" if dict_data else "")
            print(f"| {name} | {sum(map(len, frames)) / raw:.3f} | {by['json'][0] / by['json'][1]:.3f} | "
                  f"{by['stream'][0] / by['stream'][1]:.3f} | {t_c * 1e6:.0f} | {t_d * 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
