"""Cache-hit replay against bare pass-through, and against the floor: an aiohttp server that does nothing but answer.

    .venv/bin/python bench/hits_floor.py [--rounds 6] [--seconds 5]

Three targets at c=64, measured one after the other in each round (the order reversed every other round, so that
neither always goes first on a shared machine), medians over the rounds:

* ``hits``: ``evalproxy serve`` (bench/run.py's default chain) replaying 1000 stored answers (run.py's
  ``cache_hits_c64``);
* ``bare``: the bare aiohttp pass-through in front of the fake model (run.py's ``tput_c64`` of ``bare``);
* ``floor``: one aiohttp server on uvloop (evalproxy's stack) whose only route reads the body and answers the fixed
  answer a hit replays, with the same headers: what the HTTP server alone costs per request, the least a hit can cost;
* with ``--prev-python PY``, ``prev``: the previous main's proxy (as run.py's ``evalproxy_prev``), same chain;
* with ``--ladder``, ``caching``: ``evalproxy serve`` with a chain of caching and endpoint only (no system message,
  reasoning or response statistics), replaying the same answers: what the proxy's core and the store cost per hit
  above the floor, and the rest of the default chain above that.

Prints req/s and CPU ms per request of each, hits/bare and floor/bare (req/s): a replay can reach at most the floor's
req/s, so floor/bare bounds what hits/bare can be on this machine and load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from typing import Any

import run
from run import PY, cpu_seconds, first_line, loadgen, measured, running, start_upstream
from upstream import BODY as ANSWER

CACHING_ONLY = {"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True}}, "endpoint"],
                "generate_html_report": False, "server": {"status_line": "off"}}
"""``--ladder``'s chain: the least a proxy needs to replay a stored answer."""

# The answer the fake model gives (bench/upstream.py), the answer a hit replays, with the headers it is replayed with.
HEADERS = {"Content-Type": "application/json", "Date": "Mon, 07 Dec 2026 09:24:53 GMT",
           "Server": "Python/3.11 aiohttp/3.14.5", "X-EvalProxy-Cache": "hit", "X-EvalProxy-Overhead-Ms": "0.100"}


def serve_floor() -> None:
    """The floor server: prints its URL, then answers every request with ANSWER until killed."""
    import uvloop
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, headers=HEADERS, body=ANSWER)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started: it has its sockets
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ladder", action="store_true", help="also a proxy whose chain is caching and endpoint only")
    ap.add_argument("--prev-python", default=None,
                    help="also the previous main's proxy (run.py's evalproxy_prev) with this interpreter, as 'prev'")
    args = ap.parse_args()
    if args.serve_floor:
        serve_floor()
        return
    upstream = start_upstream()
    floor = subprocess.Popen([PY, __file__, "--serve-floor"], stdout=subprocess.PIPE, text=True)
    try:
        floor_url = first_line(floor).split("listening on ")[1].strip()
        with contextlib.ExitStack() as stack:
            proxy, proxy_url = stack.enter_context(running("evalproxy", upstream.url))
            bare, bare_url = stack.enter_context(running("bare", upstream.url))
            proxies = {"hits": (proxy, proxy_url)}
            if args.ladder:
                proxies["caching"] = stack.enter_context(running("evalproxy", upstream.url, CACHING_ONLY))
            if args.prev_python:
                run.PREV_PY = args.prev_python
                proxies["prev"] = stack.enter_context(running("evalproxy_prev", upstream.url))
            tag = f"hits-{time.time_ns()}"
            for _, url in proxies.values():
                loadgen(url, concurrency=8, requests=300, seconds=5, unique="warm")
                loadgen(url, concurrency=32, requests=1000, seconds=30, unique=tag, repeat=1000)
            loadgen(bare_url, concurrency=8, requests=300, seconds=5, unique="warm")
            rows: list[dict[str, dict[str, Any]]] = []
            order = [*proxies, "bare", "floor"]
            for i in range(args.rounds):
                row: dict[str, dict[str, Any]] = {}
                for what in (order if i % 2 == 0 else order[::-1]):
                    load: dict[str, Any] = {"concurrency": 64, "requests": 10**6, "seconds": args.seconds}
                    if what in proxies:
                        p, url = proxies[what]
                        row[what] = measured(p, upstream, url, unique=tag, repeat=1000, **load)
                    elif what == "bare":
                        row[what] = measured(bare, upstream, bare_url, unique=f"pass-{i}-{time.time_ns()}", **load)
                    else:
                        cpu0 = cpu_seconds(floor.pid)
                        row[what] = loadgen(floor_url, unique="floor", repeat=1000, **load)
                        row[what]["cpu_ms_per_req"] = (cpu_seconds(floor.pid) - cpu0) * 1000 / max(1, row[what]["ok"])
                rows.append(row)
                each = [f"{w} {row[w]['rps']:.0f} req/s {row[w]['cpu_ms_per_req']:.3f} ms" for w in row]
                print(f"round {i + 1}: " + " | ".join(each)
                      + f" | hits/bare {row['hits']['rps'] / row['bare']['rps']:.2f}", flush=True)
    finally:
        floor.terminate()
        upstream.stop()

    def med(f: Any) -> float:
        return statistics.median(f(r) for r in rows)

    rps = {w: med(lambda r, w=w: r[w]["rps"]) for w in order}
    cpu = {w: med(lambda r, w=w: r[w]["cpu_ms_per_req"]) for w in order}
    print(f"\nmedian of {len(rows)} rounds: hits/bare req/s {med(lambda r: r['hits']['rps'] / r['bare']['rps']):.2f}, "
          f"floor/bare {med(lambda r: r['floor']['rps'] / r['bare']['rps']):.2f}; req/s "
          + ", ".join(f"{w} {v:.0f}" for w, v in rps.items()) + "; CPU ms/req "
          + ", ".join(f"{w} {v:.3f}" for w, v in cpu.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
