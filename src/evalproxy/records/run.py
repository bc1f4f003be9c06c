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
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from evalproxy.adapter.config import LoadedConfig
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.placeholders import fill_params, params_named
from evalproxy.adapter.registry import Resolved
from evalproxy.adapter.server.lifecycle import new_run_id
from evalproxy.adapter.server.running import RunningProxy, run_command
from evalproxy.hooks.post_eval_report import report_again
from evalproxy.records.auto_export import plan_from_config, run_auto_export
from evalproxy.records.facts import expected_answers, record_facts
from evalproxy.records.harnesses import read_harness_output, write_samples
from evalproxy.records.ledger_feed import ledger_observer
from evalproxy.records.observed import ObservedParams, RequestLedger
from evalproxy.records.results import RunRecord, build_record, write_results
from evalproxy.records.rundir import expand_run_dir

log = logging.getLogger("evalproxy")  # the command line's logger: its lines read as they always have

PROGRESS_MODES = {"auto": "log", "line": "log", "bar": "tty", "off": "off"}
"""``evalproxy run --progress`` -> the status line's mode. ``auto`` is plain lines: the harness shares the terminal
(a full-screen display, or progress bars of its own) and a redrawn line would overwrite its rows."""


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
    command: Sequence[str] | None = None,
    task: str | None = None,
    launcher_params: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Find and read the harness output, then write ``results.yaml`` and ``samples.jsonl`` into ``run_dir``.

    Blocking (file reads, ``git rev-parse``): call it from a thread (``asyncio.to_thread``) inside an event loop.
    ``started_at``/``finished_at`` are ``time.time()`` values; files older than ``started_at`` are never taken.
    ``command`` is the command as written (``{proxy_url}`` kept, so it can be run again), recorded in place of
    ``argv`` (what ran); ``task`` is the launcher task (``config.type``), ``launcher_params`` its params that were
    given to the harness. ``endpoint_type`` is the configured one: the requests sent say which it was.
    """
    harness = read_harness_output(argv, workdir=workdir, started_at=started_at, explicit=explicit_results)
    facts = record_facts(harness=harness.facts, observed=observed, results=harness.results, task=task,
                         launcher=launcher_params, configured_endpoint=endpoint_type)
    record = build_record(
        command=list(command) if command is not None else argv, output_dir=run_dir, params=facts.params,
        results=harness.results, api_url=api_url, model_id=model_id, endpoint_type=facts.endpoint_type,
        api_key_name=api_key_name, adapter_config=adapter_config, workdir=workdir, run_id=run_id,
        harness=harness.info(), observed_requests=observed.total if observed else None, started_at=_iso(started_at),
        finished_at=_iso(finished_at), exit_code=exit_code, secrets=secrets, config_type=facts.type,
        facts=facts.extra,
    )
    write_results(run_dir, record)
    if harness.samples:
        write_samples(Path(run_dir), harness.samples)
    return record


def launcher_command(loaded: LoadedConfig, command: Sequence[str]) -> list[str]:
    """``command`` with the launcher task's ``{params.*}`` filled in. A task param the command does not take, or a
    placeholder without a value, is a ConfigError: a param is given to the harness or refused, never dropped."""
    filled, missing = fill_params(command, loaded.run_params)
    field = (f"evaluation.tasks[{loaded.task or loaded.tasks[0]}].nemo_evaluator_config.config.params"
             if loaded.tasks else "config.params")
    if missing:
        raise ConfigError(f"{', '.join('{' + m + '}' for m in missing)} in the command, but the config sets no "
                          "such param", field=field, file=loaded.source)
    named = params_named(command)
    unused = [n for n in _param_names(loaded.run_params) if n not in named and n.split(".")[0] not in named]
    if unused:
        hint = " ".join(f"{{params.{n}}}" for n in unused)
        raise ConfigError(
            f"the task's params {', '.join(unused)} would not reach the harness: evalproxy does not set a harness's "
            f"options. Put them in the command where the harness takes them ({hint}), or remove them from the "
            "config", field=field, file=loaded.source)
    return filled


def _param_names(params: Mapping[str, Any]) -> list[str]:
    """The params that are set, ``extra``'s keys as ``extra.KEY``."""
    out: list[str] = []
    for name, value in params.items():
        if name == "extra" and isinstance(value, Mapping):
            out.extend(f"extra.{k}" for k, v in value.items() if v is not None)
        elif value is not None:
            out.append(name)
    return out


EXIT_UNREADABLE_RESULTS = 3
"""``evalproxy run``'s status when the harness succeeded but its results could not be read (the record has none)."""


async def run_evaluation(loaded: LoadedConfig, resolved: Resolved, command: list[str], *, run_id: str | None = None,
                         results: str | None = None, on_started: Callable[[], None] | None = None,
                         progress: str | None = None) -> int:
    """Run ``command`` through a proxy of its own and write the run record; the command's exit status.

    The output dir may be a template (``expand_run_dir``); ``{proxy_url}`` in ``command`` becomes the proxy's URL,
    a launcher task's ``{params.*}`` its params (:func:`launcher_command`). ``on_started`` is called once the proxy
    listens, before the command starts. The run record is written however the command ends (a failure to write it
    is logged, never raised), then the report again, with the scores; ``results`` names the harness's results when
    they cannot be found. Harness results that cannot be read turn a 0 status into ``EXIT_UNREADABLE_RESULTS``.
    ``progress``: the status line's mode (``line``, ``bar``, ``off``; default: the config's ``status_line``).
    """
    plan = plan_from_config(loaded.sections, source=loaded.source)  # refused now, not when the run ends
    command = launcher_command(loaded, command)  # as written, {proxy_url} kept: the record's re-runnable command
    run_id = run_id or new_run_id()  # the proxy's: sorts by start time, so saved pairs sort across runs
    argv = [a.replace("{proxy_url}", "http://127.0.0.1/v1") for a in command]  # only for what it asks (--limit)
    running = RunningProxy(_for_run(loaded, run_id, progress, expected_answers(argv, loaded.run_params)),
                           resolved=resolved, run_id=run_id)
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
    finally:
        await running.stop()
        await ledger.aclose()
        record = await _write_record(running, run_id, argv=argv, command=command, started=started,
                                     exit_code=exit_code, observed=observed, results=results)
        if plan is not None and exit_code is not None:  # a run that ended (not one cancelled); failures are warnings
            await asyncio.to_thread(run_auto_export, run_dir, plan)
    return _status(exit_code, record)


def _status(exit_code: int, record: RunRecord | None) -> int:
    """The run's exit status, with a warning on stderr when the harness's scores are missing from the record."""
    h = record.harness if record is not None else None
    if h is None or h.status == "success":
        return exit_code
    print(f"evalproxy: warning: no scores recorded ({h.status}): {h.reason}", file=sys.stderr, flush=True)
    if h.status == "error" and exit_code == 0:
        return EXIT_UNREADABLE_RESULTS
    return exit_code


def _for_run(loaded: LoadedConfig, run_id: str, progress: str | None, total: int | None) -> LoadedConfig:
    """``loaded`` for this run: its output dir template expanded, the status line's mode and expected total."""
    s = loaded.server
    update: dict[str, Any] = {"output_dir": str(expand_run_dir(s.output_dir, model=s.model_id, run_id=run_id)),
                              "progress_total": total}
    if progress is not None or s.status_line == "auto":
        update["status_line"] = PROGRESS_MODES[progress or "auto"]
    return replace(loaded, server=s.model_copy(update=update))


async def _write_record(running: RunningProxy, run_id: str, *, argv: list[str], command: list[str], started: float,
                        exit_code: int | None, observed: ObservedParams, results: str | None) -> RunRecord | None:
    """The run record of a finished run, written in a thread, then the report with its scores; a failure is logged
    (the command's status stands)."""
    loaded, run = running.loaded, running.proxy.run
    server = loaded.server
    try:
        record = await asyncio.to_thread(
            record_run, run.output_dir, argv=argv, workdir=os.getcwd(), started_at=started, finished_at=time.time(),
            exit_code=exit_code, observed=observed, api_url=server.upstream_url, model_id=server.model_id,
            endpoint_type=run.config.endpoint_type, api_key_name=server.api_key_name,
            adapter_config=run.config.model_dump(mode="json"), run_id=run_id, explicit_results=results,
            secrets=server.secrets(), command=command, task=loaded.task, launcher_params=loaded.run_params,
        )
        print(f"evalproxy: run record in {run.output_dir / 'results.yaml'}", file=sys.stderr, flush=True)
    except Exception:
        log.exception("cannot write the run record (results.yaml) in %s", run.output_dir)
        return None
    try:
        await report_again(run.config, server, run.output_dir)
    except Exception:
        log.exception("cannot write the report with the scores in %s", run.output_dir)
    return record
