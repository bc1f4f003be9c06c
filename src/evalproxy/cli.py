"""The command line: ``evalproxy serve | run | report | cache | export | compare | demo | jobs``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from evalproxy import __version__, nemo_compat
from evalproxy.adapter.config import LoadedConfig, load_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.net import is_loopback
from evalproxy.adapter.core.redact import redact_text
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.state import CACHE_HIT, CACHE_KEY, CACHE_SLOT
from evalproxy.adapter.registry import Resolved, resolve
from evalproxy.adapter.server.lifecycle import new_run_id
from evalproxy.adapter.server.loop import run as run_loop
from evalproxy.adapter.server.running import WORKER_ENV, RunningProxy, Workers, run_command, worker_count
from evalproxy.jobs.cli import add_jobs_parser, run_jobs_command

log = logging.getLogger("evalproxy")

EXIT_CONFIG = 2


class _RedactingFilter(logging.Filter):
    """Removes the upstream API key and bearer tokens from every log record."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(str(exc), self.secrets)
            if text != str(exc):
                record.exc_info = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def raise_open_files_limit() -> None:
    """Many concurrent requests need many sockets: lift the soft open-files limit to the hard one where allowed."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:  # not on every platform, nor always permitted
        log.debug("open-files limit unchanged: %s", exc)



def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "upstream_url": args.upstream,
        "model_id": args.model_id,
        "api_key_name": args.api_key_name,
        "host": args.host,
        "port": args.port,
        "output_dir": args.output_dir,
        "request_timeout": args.request_timeout,
        "max_retries": args.max_retries,
        "max_concurrent_requests": args.max_concurrent_requests,
        "allowed_hosts": args.allowed_host,
        "allowed_origins": args.allowed_origin,
    }


def _add_server_args(p: argparse.ArgumentParser, default_port: int | None = None) -> None:
    p.add_argument("--config", "-c", help="adapter config (YAML or JSON): bare, launcher-shaped or legacy. A file "
                   "that lists no interceptors gets NeMo Evaluator's default chain (caching, endpoint, "
                   "response_stats); without -c, evalproxy's own default chain applies (reasoning, caching, "
                   "endpoint, response_stats)")
    p.add_argument("--task", help="a launcher config's task (evaluation.tasks[].name) whose adapter config to use; "
                   "needed when the tasks' adapter configs differ")
    p.add_argument("--strict-config", action="store_true",
                   help="an interceptor or hook param no NeMo Evaluator version defines is an error, not a warning")
    p.add_argument("--upstream", "-u", help="model endpoint: base URL (.../v1) or full .../chat/completions URL")
    p.add_argument("--model-id", help="model id (informational; shown in reports)")
    p.add_argument("--api-key-name", help="name of the env var holding the upstream API key")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=default_port, help="port (0 picks a free one)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name clients may reach the proxy by, beyond its address and localhost (repeatable; "
                   "'.example.org' for a domain; see docs/security.md)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                   help="a web page origin (http://host:port) allowed to call the proxy, with CORS (repeatable)")
    p.add_argument("--output-dir", "-o", help="where cache, statistics and reports go")
    p.add_argument("--request-timeout", type=float, help="seconds to wait for an upstream answer")
    p.add_argument("--max-retries", type=int, help="retries on 429/5xx/connection errors")
    p.add_argument("--max-concurrent-requests", type=int, help="upstream connection limit")
    p.add_argument("--run-id", help="join this run: proxies started with one run id share its pass@k slots "
                   "(default: a new run id)")
    p.add_argument("--cache-url", help="the caching interceptor's store: a Redis/Valkey URL (redis://host:6379/0, "
                   "rediss://, unix://) shared by proxies on many machines, in place of its cache_dir")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default=None,
                   help="event loop: uvloop where installed (auto, the default), or asyncio's own "
                   "(also EVALPROXY_LOOP=asyncio)")
    p.add_argument("--log-level", default=os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))


def _load(args: argparse.Namespace) -> tuple[LoadedConfig, Resolved]:
    """The config, checked against the plugins it names (discovery runs here, once; plugins written for NeMo
    Evaluator's API load too, through :func:`evalproxy.nemo_compat.install`)."""
    nemo_compat.install()
    loaded = load_config(args.config, overrides=_server_overrides(args), task=args.task,
                         strict=args.strict_config)
    if args.cache_url:
        loaded = _with_cache_url(loaded, args.cache_url)
    if not loaded.server.upstream_url:
        raise ConfigError("no upstream URL: set server.upstream_url (or target.api_endpoint.url) or --upstream",
                          field="server.upstream_url", file=loaded.source)
    resolved = resolve(loaded)
    for warning in resolved.warnings:
        print(f"evalproxy: warning: {loaded.source or 'config'}: {warning}", file=sys.stderr)
    return loaded, resolved


def _with_cache_url(loaded: LoadedConfig, url: str) -> LoadedConfig:
    """``--cache-url``: the caching interceptor's ``cache_url`` set on the command line (it wins over the file)."""
    from evalproxy.storage import is_url

    if not is_url(url):
        raise ConfigError("--cache-url must start with redis://, rediss:// or unix://", field="--cache-url")
    interceptors = [ic.model_copy(update={"config": {**ic.config, "cache_url": url}}) if ic.name == "caching" else ic
                    for ic in loaded.adapter.interceptors]
    if interceptors == loaded.adapter.interceptors:
        raise ConfigError("--cache-url needs a caching interceptor in the chain", field="--cache-url",
                          file=loaded.source)
    loaded.adapter = loaded.adapter.model_copy(update={"interceptors": interceptors})
    return loaded


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _warn_bind(host: str) -> None:
    if not is_loopback(host):
        log.warning(
            "binding to %s: the proxy is reachable beyond this machine; protect admin paths with "
            "server.admin_token_name", host,
        )


async def _serve(loaded: LoadedConfig, resolved: Resolved, run_id: str | None, worker: int | None = None) -> int:
    running = RunningProxy(loaded, resolved=resolved, run_id=run_id, worker=worker)
    url = await running.start()
    _warn_bind(loaded.server.host)
    print(f"evalproxy listening on {url}", flush=True)
    print(f"  point your harness at {url}/v1  (output: {running.proxy.run.output_dir})", flush=True)
    await _wait_for_signal()
    log.info("stopping: finishing in-flight requests, then post-eval hooks")
    await running.stop()
    print("evalproxy stopped", flush=True)
    return 0


async def _serve_workers(loaded: LoadedConfig, resolved: Resolved, n: int, run_id: str | None,
                         log_level: str) -> int:
    """``serve --workers N``: N processes of one run on one port; SIGTERM/SIGINT stops them all, then the hooks."""
    workers = Workers(loaded, resolved, n, run_id=run_id, log_level=log_level)
    url = await workers.start()
    _warn_bind(loaded.server.host)
    print(f"evalproxy listening on {url}", flush=True)
    print(f"  point your harness at {url}/v1  ({n} workers, run {workers.run_id}, output: {workers.output_dir})",
          flush=True)
    signalled = asyncio.ensure_future(_wait_for_signal())
    crashed = asyncio.ensure_future(workers.wait_any())
    await asyncio.wait([signalled, crashed], return_when=asyncio.FIRST_COMPLETED)
    crash = crashed.done()
    if crash:
        log.error("a worker exited (status %s): stopping the others", crashed.result())
    else:
        log.info("stopping %d workers: finishing in-flight requests, then post-eval hooks", n)
    signalled.cancel()
    crashed.cancel()
    status = await workers.stop()
    print("evalproxy stopped", flush=True)
    return 1 if crash else status


def _ledger_observer(observed: Any, ledger: Any) -> Callable[[RequestContext, ProxyResponse | None, int], None]:
    """A :attr:`Proxy.observers` entry feeding the run record: the body as sent upstream and what came of it.

    Cheap on purpose: a whole JSON answer is read through ``resp.json`` (parsed once, usually already by the chain);
    a stream gives the tokens of its usage event (the server saw it as it wrote the stream), and no finish reason.
    """

    def observe(ctx: RequestContext, resp: ProxyResponse | None, status: int) -> None:
        body = ctx.json
        if body is None or ctx.method != "POST":
            return
        observed.observe(body)
        state = ctx.state
        prompt_tokens = completion_tokens = finish_reason = None
        usage: Any = None
        if resp is not None and resp.stream is None:
            data = resp.json if resp.ok else None
            if isinstance(data, dict):
                usage = data.get("usage")
                choices = data.get("choices")
                if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                    finish_reason = choices[0].get("finish_reason")
        elif resp is not None:
            usage = resp.stream_usage
        if isinstance(usage, dict):
            prompt_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion_tokens = usage.get("completion_tokens", usage.get("output_tokens"))
        ledger.record(body, path=ctx.path, cache_key=state.get(CACHE_KEY), slot=state.get(CACHE_SLOT),
                      status=status, latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                      prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      finish_reason=finish_reason, cache_hit=bool(state.get(CACHE_HIT, False)))

    return observe


async def _run(loaded: LoadedConfig, resolved: Resolved, command: list[str], run_id: str | None,
               results: str | None = None) -> int:
    from evalproxy.records import ObservedParams, RequestLedger, expand_run_dir, record_run

    run_id = run_id or new_run_id()  # the proxy's: sorts by start time, so saved pairs sort across runs
    s = loaded.server
    run_dir = expand_run_dir(s.output_dir, model=s.model_id, run_id=run_id)
    if str(run_dir) != s.output_dir:
        loaded = LoadedConfig(loaded.adapter, s.model_copy(update={"output_dir": str(run_dir)}), loaded.source,
                              loaded.prefix)
    running = RunningProxy(loaded, resolved=resolved, run_id=run_id)
    run_dir = running.proxy.run.output_dir  # absolute
    observed = ObservedParams()
    ledger = RequestLedger(run_dir)
    running.proxy.observers.append(_ledger_observer(observed, ledger))
    try:
        await running.start()
    except BaseException:
        await ledger.aclose()
        raise
    _warn_bind(loaded.server.host)
    argv = [a.replace("{proxy_url}", f"{running.url}/v1") for a in command]
    started = time.time()
    exit_code: int | None = None
    try:
        exit_code = await run_command(running, command)
        return exit_code
    finally:
        await running.stop()
        await ledger.aclose()
        key = loaded.server.api_key()
        try:
            await asyncio.to_thread(
                record_run, run_dir, argv=argv, workdir=os.getcwd(), started_at=started, finished_at=time.time(),
                exit_code=exit_code, observed=observed, api_url=loaded.server.upstream_url,
                model_id=loaded.server.model_id, endpoint_type=running.proxy.run.config.endpoint_type,
                api_key_name=loaded.server.api_key_name,
                adapter_config=running.proxy.run.config.model_dump(mode="json"), run_id=run_id,
                explicit_results=results, secrets=[key] if key else [],
            )
            print(f"evalproxy: run record in {run_dir / 'results.yaml'}", file=sys.stderr, flush=True)
        except Exception:
            log.exception("cannot write the run record (results.yaml) in %s", run_dir)


def _cmd_report(args: argparse.Namespace) -> int:
    from evalproxy.hooks.post_eval_report import render_reports

    paths = asyncio.run(render_reports(Path(args.dir)))
    for p in paths:
        print(p)
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    return asyncio.run(_cache(args))


async def _cache(args: argparse.Namespace) -> int:
    """``cache stats|clear|explain WHERE`` and ``cache copy SRC DST``: WHERE a run dir (its store, on disk or on the
    Redis server its caching used), a cache dir or a Redis URL; one code path, through the store interface."""
    import json

    from evalproxy.storage import Store, StoreError, copy_store, is_url, open_store, run_store

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
        if args.action == "clear" and is_url(src) and not is_url(args.dir):
            print(f"evalproxy: the run in {args.dir} used the shared store {src}: to clear it, give its URL",
                  file=sys.stderr)
            return EXIT_CONFIG
        store = await asyncio.to_thread(open_store, src)
        opened.append(store)
        if args.action == "stats":
            print(json.dumps(await store.stats(), indent=2))
        elif args.action == "clear":
            print(f"cleared {await store.clear()} entries from {store.location}")
        elif args.action == "explain":
            assert request is not None
            return _cache_explain(request, store.location, await _stored_bodies(store))
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


async def _stored_bodies(store: Any) -> list[dict[str, Any]]:
    """The request bodies a store saved (``save_requests``), in arrival order."""
    from evalproxy.adapter.core.loads import MAX_DEPTH, too_deep

    bodies = []
    for p in await store.saved_pairs(with_responses=False):
        if not isinstance(p.request, dict) or p.damaged:
            continue
        if too_deep(p.request):
            log.warning("stored request %s/%s nests deeper than %d levels: skipped", p.run_id, p.request_id,
                        MAX_DEPTH)
            continue
        bodies.append(p.request)
    return bodies


def _request_to_explain(request_file: str) -> dict[str, Any] | None:
    """The request body of ``cache explain``, or None (said why) when the file does not hold a JSON object."""
    from evalproxy.adapter.core.loads import load_json

    try:
        request = load_json(Path(request_file).read_bytes(), source=request_file)
    except ValueError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return None
    if not isinstance(request, dict):
        print(f"evalproxy: {request_file} does not hold a JSON object", file=sys.stderr)
        return None
    return request


def _cache_explain(request: dict[str, Any], where: str, stored: list[dict[str, Any]]) -> int:
    from evalproxy.records import explain_miss

    if not stored:
        print(f"no stored requests in {where} (the cache saves request bodies only with save_requests: true)")
        return 1
    for n in explain_miss(request, stored, limit=3):
        print(f"stored request #{n.index} ({n.distance} field(s) differ): {n.summary()}")
    return 0


class _RunStore:
    """What compare reads of one run's store: the answer text of each ledger entry (by prompt key), and the saved
    request bodies."""

    def __init__(self, answers: dict[str, str | None], bodies: list[dict[str, Any]]) -> None:
        self.answers, self.bodies = answers, bodies


async def _read_run_store(run_dir: Path) -> _RunStore:
    """One run's answers (the ledger says which cache key and slot) and saved requests, read through the store
    interface from whatever store its caching used (its cache dir, or a Redis server); a run without a store
    gives none."""
    from evalproxy.adapter.flow.shape import answer_text
    from evalproxy.storage import open_store

    index, location = await asyncio.to_thread(_ledger_and_store, run_dir)
    if location is None:
        return _RunStore({}, [])
    store = await asyncio.to_thread(open_store, location)
    try:
        answers: dict[str, str | None] = {}
        keys = list(index)
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            stored = await store.get_answers([index[k] for k in part])
            answers.update((k, answer_text(a.json()) if a is not None else None)
                           for k, a in zip(part, stored, strict=True))
        return _RunStore(answers, await _stored_bodies(store))
    finally:
        await store.aclose()


def _ledger_and_store(run_dir: Path) -> tuple[dict[str, tuple[str, int]], str | Path | None]:
    """A run's ledger as prompt key -> (cache key, slot), and its store (None: it has none)."""
    from evalproxy.records import read_ledger
    from evalproxy.storage import is_url, run_store

    index: dict[str, tuple[str, int]] = {}
    for e in read_ledger(run_dir):
        if e.cache_key is not None and e.prompt_key not in index:
            index[e.prompt_key] = (e.cache_key, e.slot or 0)
    location = run_store(run_dir)
    if not is_url(location) and (location == run_dir or not Path(location).is_dir()):
        return index, None
    return index, location


class _CachedAnswers:
    """``answers(run_dir, prompt_key)`` and ``bodies(run_dir)`` for compare: each run's store read once, through the
    store interface."""

    def __init__(self) -> None:
        self._runs: dict[Path, _RunStore] = {}

    def run(self, run_dir: str | os.PathLike[str]) -> _RunStore:
        d = Path(run_dir)
        if d not in self._runs:
            self._runs[d] = asyncio.run(_read_run_store(d))
        return self._runs[d]

    def __call__(self, run_dir: str | os.PathLike[str], key: str) -> str | None:
        return self.run(run_dir).answers.get(key)

    def bodies(self, run_dir: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
        return self.run(run_dir).bodies

    def close(self) -> None:
        self._runs.clear()


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from evalproxy.records import compare_runs
    from evalproxy.storage import StoreError

    for d in (args.baseline, args.candidate):
        if not Path(d).is_dir():
            print(f"evalproxy compare: no run directory at {d}", file=sys.stderr)
            return EXIT_CONFIG
    answers = _CachedAnswers()
    try:
        for d in (args.baseline, args.candidate):
            answers.run(d)
        c = compare_runs(args.baseline, args.candidate, answers=answers, request_bodies=answers.bodies,
                         max_changed=args.max_changed, fail_on=args.fail_on)
    except StoreError as exc:
        print(f"evalproxy compare: {exc}", file=sys.stderr)
        return 1
    finally:
        answers.close()
    print(c.to_text())
    if args.html:
        Path(args.html).write_text(c.to_html(), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(c.to_dict(), indent=2, default=str), encoding="utf-8")
    return c.exit_code


def _cmd_stats(args: argparse.Namespace) -> int:
    """``stats merge``: one eval_factory_metrics.json for proxies that served one run, from their output dirs."""
    from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
    from evalproxy.adapter.core.loads import read_yaml
    from evalproxy.adapter.server.output import CONFIG_FILE, STATISTICS_FILE, merge_statistics

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.is_dir():
            print(f"evalproxy: no run directory at {d}", file=sys.stderr)
            return 1
    config_file = Path(args.config) if args.config else dirs[0] / CONFIG_FILE
    doc = read_yaml(config_file) if config_file.is_file() else {}
    merged = merge_statistics(dirs, _builtin_interceptors(doc, str(config_file)))
    out = Path(args.output) if args.output else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / STATISTICS_FILE, dump_json({**merged, "merged_from": [str(d) for d in dirs]}))
    print(out / STATISTICS_FILE)
    return 0


def _builtin_interceptors(doc: Any, source: str) -> list[tuple[type[Any], Any]]:
    """The interceptors an effective config names that are evalproxy's own or an installed package's, with their
    params: what ``stats merge`` needs. Its ``discovery`` is ignored and nothing it names is imported: a file read is
    never a reason to run code. Units it names that are not known so are merged field by field (a warning says so)."""
    from evalproxy.adapter.config import AdapterConfig
    from evalproxy.adapter.registry.registry import Registry, resolve_interceptors

    adapter_doc = doc.get("adapter_config") if isinstance(doc, dict) else None
    if not isinstance(adapter_doc, dict):
        return []
    try:
        adapter = AdapterConfig.model_validate({k: v for k, v in adapter_doc.items() if k != "discovery"})
    except ValueError as exc:
        log.warning("%s: not a usable adapter config, statistics merged field by field: %s", source, exc)
        return []
    registry = Registry.default()  # built-ins and installed packages' entry points, never ``discovery``
    known = []
    for ic in adapter.interceptors:
        try:
            registry.interceptor(ic.name)
            known.append(ic)
        except ConfigError:
            log.warning("%s: interceptor '%s' is not evalproxy's own nor installed: its statistics are merged field "
                        "by field", source, ic.name)
    try:
        return resolve_interceptors(adapter.model_copy(update={"interceptors": known}), registry, file=source)
    except ConfigError as exc:
        log.warning("%s: statistics merged field by field: %s", source, exc)
        return []


def _cmd_export(args: argparse.Namespace) -> int:
    from evalproxy.records import export_runs

    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        print(f"evalproxy export: no run directory at {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dest == "mlflow":
        if not args.tracking_uri:
            print("evalproxy export --dest mlflow needs --tracking-uri", file=sys.stderr)
            return EXIT_CONFIG
        try:
            from evalproxy.records.mlflow_export import export_to_mlflow

            ids = export_to_mlflow(args.run_dirs, tracking_uri=args.tracking_uri, experiment_name=args.experiment)
        except ImportError as exc:
            print(f"evalproxy: MLflow export needs the extra evalproxy[mlflow] ({exc})", file=sys.stderr)
            return 1
        except Exception as exc:  # MLflow's own errors (an unsupported store URI, a server that refuses)
            print(f"evalproxy: MLflow export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        for run_id in ids:
            print(run_id)
        return 0
    print(export_runs(args.run_dirs, args.output_dir, fmt=args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evalproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy until SIGINT/SIGTERM, then the post-eval hooks")
    _add_server_args(p)
    p.add_argument("--workers", default="1", help="processes serving one run on one port (auto: one per core)")

    p = sub.add_parser("run", help="run a harness command through the proxy: evalproxy run -c FILE -- CMD ...")
    _add_server_args(p, default_port=0)
    p.add_argument("--results", help="the harness's results file or directory, when evalproxy cannot find it")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    p = sub.add_parser("report", help="re-render report.html and report.json from a run directory")
    p.add_argument("dir")

    p = sub.add_parser("cache", help="look at, clear or copy a cache, or explain why a request misses")
    p.add_argument("action", choices=["stats", "clear", "explain", "copy"])
    p.add_argument("dir", help="a run's output dir, a cache dir, or a Redis URL (redis://host:6379/0?prefix=NAME:)")
    p.add_argument("request", nargs="?", help="explain: a request body (JSON file); copy: the destination (a cache "
                   "dir or a Redis URL)")

    p = sub.add_parser("export", help="gather runs into processed_results.json (or .csv, or MLflow)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output-dir", "-o", default=".", help="where processed_results goes (default: here)")
    p.add_argument("--dest", choices=["file", "mlflow"], default="file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///..., file:...)")
    p.add_argument("--experiment", default="evalproxy", help="MLflow experiment name")

    p = sub.add_parser("compare", help="are two runs comparable, what changed in scores and answers")
    p.add_argument("baseline")
    p.add_argument("candidate")
    p.add_argument("--html", help="write the comparison as an HTML page")
    p.add_argument("--json", help="write the comparison as JSON")
    p.add_argument("--fail-on", choices=["none", "regression"], default="none",
                   help="regression: exit 1 on a significant drop in a score")
    p.add_argument("--max-changed", type=int, default=10, help="changed answers shown")

    p = sub.add_parser("stats", help="merge the statistics of proxies that served one run (other machines, workers)")
    p.add_argument("action", choices=["merge"])
    p.add_argument("dirs", nargs="+", help="the proxies' output dirs")
    p.add_argument("--output", "-o", help="where eval_factory_metrics.json goes (default: the current dir)")
    p.add_argument("--config", "-c", help="the run's config (default: the first dir's adapter_config.yaml)")

    p = sub.add_parser("demo", help="a self-contained run against a simulated model")
    p.add_argument("--output-dir", "-o", default=None, help="where the demo writes (default: a new temp dir)")
    p.add_argument("--requests", type=int, default=24)

    add_jobs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "jobs":
            return run_jobs_command(args)
        if args.command in ("serve", "run"):
            setup_logging(args.log_level)
            loaded, resolved = _load(args)
            key = loaded.server.api_key()
            setup_logging(args.log_level, [key] if key else [])
            raise_open_files_limit()
            if args.command == "serve":
                worker = os.environ.get(WORKER_ENV)
                if worker is not None:  # one of serve --workers' processes
                    return run_loop(_serve(loaded, resolved, args.run_id, int(worker)), args.loop)
                try:
                    n = worker_count(args.workers)
                except ValueError:
                    print(f"evalproxy: --workers must be a number of at least 1 or auto, not {args.workers!r}",
                          file=sys.stderr)
                    return EXIT_CONFIG
                if n > 1:
                    return run_loop(_serve_workers(loaded, resolved, n, args.run_id, args.log_level), args.loop)
                return run_loop(_serve(loaded, resolved, args.run_id), args.loop)
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            if not cmd:
                print("evalproxy run: give the command after --", file=sys.stderr)
                return EXIT_CONFIG
            return run_loop(_run(loaded, resolved, cmd, args.run_id, args.results), args.loop)
        setup_logging(os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "cache":
            return _cmd_cache(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "stats":
            return _cmd_stats(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "demo":
            from evalproxy.demo import run_demo

            return run_demo(args)
    except ConfigError as exc:
        print(f"evalproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return 1
    return 0
