"""``evalproxy cache stats|clear|explain|copy``: a run's store, a cache dir or a Redis URL, through the store
interface."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from evalproxy.adapter.core.loads import load_json, read_yaml
from evalproxy.adapter.server.output import CONFIG_FILE
from evalproxy.cli.common import EXIT_CONFIG, logged
from evalproxy.records.compare_data import failed_requests, stored_bodies
from evalproxy.records.explain import explain_text, key_request
from evalproxy.storage import Store, StoreError, copy_store, is_url, open_store, run_store


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("cache", help="look at, clear or copy a cache, or explain why a request misses")
    p.add_argument("action", choices=["stats", "clear", "explain", "copy"])
    p.add_argument("dir", help="a run's output dir, a cache dir, or a Redis URL (redis://host:6379/0?prefix=NAME:)")
    p.add_argument("request", nargs="?", help="explain: a request body (JSON file); copy: the destination (a cache "
                   "dir or a Redis URL)")
    p.add_argument("--path", help="explain: the request's path (default: /v1/completions for a prompt, else the run's "
                   "endpoint_type, /v1/chat/completions)")
    p.add_argument("--session", help="explain: the request's session (its X-Session-Id header), for a run whose "
                   "caching keys by session (session_prefix: true)")
    p.set_defaults(func=logged(cmd_cache))


def cmd_cache(args: argparse.Namespace) -> int:
    return asyncio.run(_cache(args))


async def _cache(args: argparse.Namespace) -> int:
    """``cache stats|clear|explain WHERE`` and ``cache copy SRC DST``: WHERE a run dir (its store, on disk or on the
    Redis server its caching used), a cache dir or a Redis URL; one code path, through the store interface."""
    def location(where: str, must_exist: bool) -> str | Path | None:
        found = run_store(where)
        if must_exist and not is_url(found) and not Path(found).is_dir():
            print(f"evalproxy: no cache at {found}", file=sys.stderr)
            return None
        return found

    if args.action in ("copy", "explain") and not args.request:
        print("evalproxy cache copy: give the source and the destination: evalproxy cache copy SRC DST"
              if args.action == "copy" else
              "evalproxy cache explain: give the request body: evalproxy cache explain RUN_DIR REQUEST.json",
              file=sys.stderr)
        return EXIT_CONFIG
    request: dict[str, Any] | None = None
    if args.action == "explain":
        request = _request_to_explain(args.request)
        if request is None:
            return EXIT_CONFIG
    opened: list[Store] = []
    try:
        src = await asyncio.to_thread(location, args.dir, True)
        if src is None:
            return 1
        if args.action == "clear" and not is_url(args.dir) and _outside(src, Path(args.dir)):
            print(f"evalproxy: the run in {args.dir} used the shared store {src}: to clear it, give its URL"
                  if is_url(src) else f"evalproxy: the run in {args.dir} used the cache {src}, outside it: to clear "
                  "it, name that directory", file=sys.stderr)
            return EXIT_CONFIG
        store = await asyncio.to_thread(open_store, src)
        opened.append(store)
        if args.action == "stats":
            print(json.dumps(await store.stats(), indent=2))
        elif args.action == "clear":
            print(f"cleared {await store.clear()} entries from {store.location}")
        elif args.action == "explain":
            assert request is not None
            return await _explain(request, args, store)
        else:
            dst = await asyncio.to_thread(location, args.request, False)
            assert dst is not None
            target = await asyncio.to_thread(open_store, dst)
            opened.append(target)
            n = await copy_store(store, target)
            print(f"copied {n['answers']} answers, {n['saved_requests']} saved requests and {n['failures']} "
                  f"failures from {store.location} to {target.location}"
                  + (f" ({n['skipped']} damaged answers skipped)" if n["skipped"] else ""))
    except StoreError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in opened:
            await s.aclose()
    return 0


def _request_to_explain(request_file: str) -> dict[str, Any] | None:
    """The request body of ``cache explain``, or None (said why) when the file does not hold a JSON object."""
    try:
        request = load_json(Path(request_file).read_bytes(), source=request_file)
    except ValueError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return None
    if not isinstance(request, dict):
        print(f"evalproxy: {request_file} does not hold a JSON object", file=sys.stderr)
        return None
    return request


async def _explain(request: dict[str, Any], args: argparse.Namespace, store: Store) -> int:
    """HIT or MISS for ``request`` keyed as the run in ``args.dir`` keys it, then why (see ``explain_text``)."""
    adapter = await asyncio.to_thread(_run_adapter, args.dir)
    keyed = await key_request(request, adapter, path=args.path, session=args.session)
    answered = (await store.get_answers([(keyed.key, 0)]))[0] is not None
    code, lines = explain_text(keyed, store.location, answered, await stored_bodies(store),
                               await failed_requests(store))
    print("\n".join(lines))
    return code


def _run_adapter(where: str) -> dict[str, Any]:
    """The adapter config a run directory's proxy ran with (its ``adapter_config.yaml``); {} for a cache dir or URL.
    Read with the bounded YAML loader; nothing it names is imported."""
    path = Path(where) / CONFIG_FILE
    if is_url(where) or not path.is_file():
        return {}
    doc = read_yaml(path)
    adapter = doc.get("adapter_config") if isinstance(doc, dict) else None
    return adapter if isinstance(adapter, dict) else {}


def _outside(store: str | Path, where: Path) -> bool:
    """Whether a run dir's store lies outside it (a Redis server, or a directory its config names elsewhere): a
    run dir handed to ``clear`` never empties what is not its own."""
    if is_url(store):
        return True
    return not Path(store).resolve().is_relative_to(where.resolve())
