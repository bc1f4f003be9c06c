"""The ceiling for any Python proxy: a bare aiohttp pass-through, no chain, no parsing. Prints its port.

    python bench/bare_proxy.py --upstream http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web
from loopback import run, serve_forever

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    args = p.parse_args()

    async def serve() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
            async with session.request(request.method, args.upstream + request.path, data=body,
                                       headers=headers) as up:
                out = web.StreamResponse(status=up.status,
                                         headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
                await out.prepare(request)
                async for data in up.content.iter_any():
                    await out.write(data)
                await out.write_eof()
                return out

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        await serve_forever(app)

    run(serve())  # uvloop where installed, as evalproxy serve: like for like


if __name__ == "__main__":
    main()
