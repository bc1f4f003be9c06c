"""The end of an ``evalproxy run``: read the harness's scores and write the run record into the run directory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from evalproxy.records.harnesses import read_harness_output, write_samples
from evalproxy.records.observed import ObservedParams
from evalproxy.records.results import RunRecord, build_record, write_results


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
