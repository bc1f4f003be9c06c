"""An ``evalproxy run``: :func:`run_evaluation` starts the proxy, feeds the run record from it, runs the harness
command and, at its end, :func:`record_run` reads the harness's scores and writes the run record into the run
directory. ``evalproxy run`` and the jobs service's jobs (which run ``evalproxy run``) go through it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from evalproxy.adapter.config import LoadedConfig
from evalproxy.adapter.registry import Resolved
from evalproxy.adapter.server.lifecycle import new_run_id
from evalproxy.adapter.server.running import RunningProxy, run_command
from evalproxy.records.auto_export import plan_from_config, run_auto_export
from evalproxy.records.harnesses import read_harness_output, write_samples
from evalproxy.records.ledger_feed import ledger_observer
from evalproxy.records.observed import ObservedParams, RequestLedger
from evalproxy.records.results import RunRecord, build_record, write_results
from evalproxy.records.rundir import expand_run_dir

log = logging.getLogger("evalproxy")  # the command line's logger: its lines read as they always have


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts).isoformat() if ts is not None else None


def record_run(
    run_dir: str | os.PathLike[str],
    *,
    argv: Sequence[str],
    workdir: str | os.PathLike[str],
    started_at: float,
    finished_at: float | None = None,
    exit_code: int | None = None,
    observed: ObservedParams | None = None,
    api_url: str | None = None,
    model_id: str | None = None,
    endpoint_type: str | None = None,
    api_key_name: str | None = None,
    adapter_config: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    explicit_results: str | os.PathLike[str] | None = None,
    secrets: Iterable[str] = (),
) -> RunRecord:
    """Find and read the harness output, then write ``results.yaml`` and ``samples.jsonl`` into ``run_dir``.

    Blocking (file reads, ``git rev-parse``): call it from a thread (``asyncio.to_thread``) inside an event loop.
    ``started_at``/``finished_at`` are ``time.time()`` values; files older than ``started_at`` are never taken.
    """
    harness = read_harness_output(argv, workdir=workdir, started_at=started_at, explicit=explicit_results)
    record = build_record(
        command=argv, output_dir=run_dir, params=observed.params() if observed else {}, results=harness.results,
        api_url=api_url, model_id=model_id, endpoint_type=endpoint_type, api_key_name=api_key_name,
        adapter_config=adapter_config, workdir=workdir, run_id=run_id, harness=harness.info(),
        observed_requests=observed.total if observed else None, started_at=_iso(started_at),
        finished_at=_iso(finished_at), exit_code=exit_code, secrets=secrets,
    )
    write_results(run_dir, record)
    if harness.samples:
        write_samples(Path(run_dir), harness.samples)
    return record


async def run_evaluation(loaded: LoadedConfig, resolved: Resolved, command: list[str], *, run_id: str | None = None,
                         results: str | None = None, on_started: Callable[[], None] | None = None) -> int:
    """Run ``command`` through a proxy of its own and write the run record; the command's exit status.

    The output dir may be a template (``expand_run_dir``); ``{proxy_url}`` in ``command`` becomes the proxy's URL.
    ``on_started`` is called once the proxy listens, before the command starts. The run record is written however
    the command ends (a failure to write it is logged, never raised); ``results`` names the harness's results when
    they cannot be found.
    """
    plan = plan_from_config(loaded.sections, source=loaded.source)  # refused now, not when the run ends
    run_id = run_id or new_run_id()  # the proxy's: sorts by start time, so saved pairs sort across runs
    running = RunningProxy(_in_run_dir(loaded, run_id), resolved=resolved, run_id=run_id)
    run_dir = running.proxy.run.output_dir  # absolute
    observed = ObservedParams()
    ledger = RequestLedger(run_dir)
    running.proxy.observers.append(ledger_observer(observed, ledger))
    try:
        await running.start()
    except BaseException:
        await ledger.aclose()
        raise
    if on_started is not None:
        on_started()
    argv = [a.replace("{proxy_url}", f"{running.url}/v1") for a in command]
    started = time.time()
    exit_code: int | None = None
    try:
        exit_code = await run_command(running, command)
        return exit_code
    finally:
        await running.stop()
        await ledger.aclose()
        await _write_record(running, run_id, argv=argv, started=started, exit_code=exit_code, observed=observed,
                            results=results)
        if plan is not None and exit_code is not None:  # a run that ended (not one cancelled); failures are warnings
            await asyncio.to_thread(run_auto_export, run_dir, plan)


def _in_run_dir(loaded: LoadedConfig, run_id: str) -> LoadedConfig:
    """``loaded`` with its output dir template expanded for this run (itself when there was nothing to expand)."""
    s = loaded.server
    run_dir = expand_run_dir(s.output_dir, model=s.model_id, run_id=run_id)
    if str(run_dir) == s.output_dir:
        return loaded
    return LoadedConfig(loaded.adapter, s.model_copy(update={"output_dir": str(run_dir)}), loaded.source,
                        loaded.prefix)


async def _write_record(running: RunningProxy, run_id: str, *, argv: list[str], started: float,
                        exit_code: int | None, observed: ObservedParams, results: str | None) -> None:
    """The run record of a finished run, written in a thread; a failure is logged (the command's status stands)."""
    server, run = running.loaded.server, running.proxy.run
    key = server.api_key()
    try:
        await asyncio.to_thread(
            record_run, run.output_dir, argv=argv, workdir=os.getcwd(), started_at=started, finished_at=time.time(),
            exit_code=exit_code, observed=observed, api_url=server.upstream_url, model_id=server.model_id,
            endpoint_type=run.config.endpoint_type, api_key_name=server.api_key_name,
            adapter_config=run.config.model_dump(mode="json"), run_id=run_id, explicit_results=results,
            secrets=[key] if key else [],
        )
        print(f"evalproxy: run record in {run.output_dir / 'results.yaml'}", file=sys.stderr, flush=True)
    except Exception:
        log.exception("cannot write the run record (results.yaml) in %s", run.output_dir)
