"""redis-server's own time per hit and per answer written, by how the bytes travel: through the batch script's Lua or
by a plain command beside it (INFO commandstats: time in the commands, the server's event loop and syscalls left out).

    python bench/redis_script_cost.py [--calls 400] [--batch 17]

Starts a redis-server on a free loopback port. Per answer size (200 B, 2.5 KB: a compressed corpus answer, 10 KB):

* a hit as the store's claim operation did it (the answer read in Lua and returned in the script's reply), as a
  look reading the answers in the script (HMGET in Lua), and as a look now (HEXISTS in Lua, the answers read by a
  plain HMGET sent with the script call), against a plain HMGET alone;
* an answer written by the settle operation with the answer in the script's argument, against a plain HSET sent
  with a settle operation that carries none.

``--batch``: operations per script call (17: a batch of hits through the proxy at c=64).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from typing import Any

import redis
from run import start_redis

import evalproxy.storage.redis as R

LOOK_IN_LUA = """
local n = tonumber(ARGV[1])
local got = redis.call('HMGET', 'P:answers', unpack(ARGV, 2, 1 + n))
local out, k = {}, 0
for j = 1, n do
  out[k + 1] = string.format('%d:%d', #got[j] + 1, 0)
  out[k + 2] = got[j]
  k = k + 2
end
return table.concat(out)
"""


def per_op(r: redis.Redis, fn: Callable[[], Any], calls: int, n: int) -> float:
    """Microseconds of command time per operation (EVALSHA, HMGET and HSET together)."""
    r.config_resetstat()
    for _ in range(calls):
        fn()
    stats = r.info("commandstats")
    return sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_hmget", "cmdstat_hset")) / (
        calls * n)


def cases(r: redis.Redis, batch: str, in_lua: str, n: int, size: int) -> dict[str, Callable[[], Any]]:
    """The ways of a hit and of a write, for ``n`` answers of ``size`` random bytes (stored first)."""
    holder, fields = b"o|host|1", [f"k{i}:0".encode() for i in range(n)]
    rng = random.Random(size)
    blobs = [rng.randbytes(size) for _ in range(n)]
    r.delete("P:answers")
    r.hset("P:answers", mapping=dict(zip(fields, blobs, strict=True)))
    claims = b"".join(R.pack_op("claim", ["P:answers", f"P:lease:k{i}", "", ""], [f"k{i}", holder, 30000, 0, "1", ""])
                      for i in range(n))
    look_args = [b"P:answers", b"P:lease:", b"30000", b"%d" % n, *fields, *[holder] * n]

    def settles(answer: bool) -> bytes:
        return b"".join(R.pack_op("settle", ["P:answers", f"P:lease:k{i}:0", "P:pairs", "P:pair", "P:free"],
                                  [f"k{i}:0", blobs[i] if answer else b"", holder, "", 0, b"", ""]) for i in range(n))

    with_answers, without = settles(True), settles(False)

    def looks() -> Any:
        pipe = r.pipeline(transaction=False)
        pipe.evalsha(batch, 0, b"", *look_args)
        pipe.hmget("P:answers", fields)
        return pipe.execute()

    def hset_then_settle() -> Any:
        pipe = r.pipeline(transaction=False)
        pipe.hset("P:answers", mapping=dict(zip(fields, blobs, strict=True)))
        pipe.evalsha(batch, 0, without)
        return pipe.execute()

    return {
        "hit: claim operation (answer through Lua)": lambda: r.evalsha(batch, 0, claims),
        "hit: HMGET in Lua (answer through Lua)": lambda: r.evalsha(in_lua, 0, n, *fields),
        "hit: look (HEXISTS in Lua) + plain HMGET": looks,
        "hit: plain HMGET alone": lambda: r.hmget("P:answers", fields),
        "write: settle with the answer in Lua": lambda: r.evalsha(batch, 0, with_answers),
        "write: plain HSET + settle without": hset_then_settle,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--batch", type=int, default=17)
    args = ap.parse_args()
    server, port = start_redis()
    try:
        r = redis.Redis(port=port)
        batch, in_lua = r.script_load(R._BATCH), r.script_load(LOOK_IN_LUA)
        print(f"| us of redis-server per operation ({args.batch} a script call) | 200 B | 2.5 KB | 10 KB |")
        print("|---|---:|---:|---:|")
        rows: dict[str, list[float]] = {}
        for size in (200, 2500, 10_000):
            for name, fn in cases(r, batch, in_lua, args.batch, size).items():
                rows.setdefault(name, []).append(per_op(r, fn, args.calls, args.batch))
        for name, values in rows.items():
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
