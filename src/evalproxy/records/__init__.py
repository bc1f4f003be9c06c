"""Run records: ``results.yaml`` in NeMo Evaluator's shape, harness score parsers, export, and run comparison.

The proxy knows nothing of this package; the CLI and the jobs service call into it. ``evalproxy run`` is
:func:`evalproxy.records.run.run_evaluation` (it starts a proxy of its own, so this package sits above the
adapter); compare's store reading is :mod:`evalproxy.records.compare_data`, ``stats merge`` is
:mod:`evalproxy.records.stats_merge`. The wiring, by command:

``evalproxy run -o TEMPLATE -- <harness command>``  (all of it in ``run_evaluation``)
    1. ``run_dir = expand_run_dir(template, model=model_id, run_id=run_id)``  (``new_run_id()`` makes an id)
    2. at proxy start: ``observed = ObservedParams()`` and ``ledger = RequestLedger(run_dir)``
    3. per request, on the event loop, with the body as sent upstream (``ledger_feed.ledger_observer``):
       ``observed.observe(body)``; when the answer is known:
       ``ledger.record(body, path=..., cache_key=..., slot=..., status=..., latency_ms=..., prompt_tokens=...,
       completion_tokens=..., finish_reason=..., cache_hit=...)``  (never blocks; a thread writes requests.jsonl)
    4. when the harness exits: ``await ledger.aclose()``, then in a thread
       ``record_run(run_dir, argv=..., workdir=..., started_at=..., finished_at=..., exit_code=..., observed=observed,
       api_url=..., model_id=..., endpoint_type=..., api_key_name=..., adapter_config=<effective, as dict>,
       run_id=..., explicit_results=<--results PATH or None>, secrets=[api key value])``
       which reads the harness output and writes ``results.yaml`` (+ ``samples.jsonl``).

``evalproxy export RUN_DIR... [--dest local|mlflow|wandb|inspect] [--format ...] [-o DIR] [--set KEY=VALUE]``
    ``auto_export.export_to(dest, run_dirs, settings)`` -> what was written; ``local`` (alias ``file``) is
    ``export_runs(run_dirs, out_dir, fmt="json"|"csv")`` (``processed_results.json``/``.csv``, the document from
    ``build_processed_results(run_dirs)``); ``mlflow_export.export_to_mlflow``, ``wandb_export.export_to_wandb`` and
    ``inspect_export.export_to_inspect`` import their optional packages only when called. What they read of a run:
    ``export_data.read_run`` (record, scores per task, curated proxy statistics, files) and ``sample_rows`` (samples
    joined with the requests the proxy saw). When a run ends, ``run_evaluation`` calls
    ``auto_export.run_auto_export(run_dir, plan_from_config(loaded.sections))``.

``evalproxy compare BASELINE CANDIDATE [--html FILE] [--json FILE] [--fail-on regression]``
    ``c = compare_runs(baseline, candidate, answers=<(run_dir, prompt_key) -> str | None>,
    request_bodies=<run_dir -> iterable of stored request bodies>, max_changed=10, fail_on="none"|"regression")``;
    print ``c.to_text()``, write ``c.to_html()`` / ``c.to_dict()``; exit with ``c.exit_code``
    (0 comparable and no gated regression, 1 significant drop with ``fail_on="regression"``, 2 not comparable).

``evalproxy cache explain RUN_DIR REQUEST.json``
    ``explain_miss(request_body, stored_bodies, limit=3)`` -> ``[Neighbour(index, distance, diffs)]``;
    ``Neighbour.summary()`` says it in words ("system prompt changed (messages[0].content); max_tokens bumped: ...").

Files in a run directory written here: ``results.yaml`` (``RESULTS_FILE``), ``requests.jsonl`` (``LEDGER_FILE``),
``samples.jsonl`` (per-sample harness scores, for paired tests).
"""

from evalproxy.records.compare import Comparison, compare_runs
from evalproxy.records.explain import FieldDiff, Neighbour, explain_miss, field_diffs
from evalproxy.records.export import build_processed_results, export_runs
from evalproxy.records.harnesses import HarnessResult, SampleScore, detect_harness, read_harness_output
from evalproxy.records.observed import (
    LEDGER_FILE,
    LedgerEntry,
    ObservedParams,
    RequestLedger,
    input_key,
    prompt_key,
    read_ledger,
)
from evalproxy.records.results import RESULTS_FILE, RunRecord, build_record, read_results, write_results
from evalproxy.records.run import record_run
from evalproxy.records.rundir import expand_run_dir, new_run_id

__all__ = [
    "LEDGER_FILE",
    "RESULTS_FILE",
    "Comparison",
    "FieldDiff",
    "HarnessResult",
    "LedgerEntry",
    "Neighbour",
    "ObservedParams",
    "RequestLedger",
    "RunRecord",
    "SampleScore",
    "build_processed_results",
    "build_record",
    "compare_runs",
    "detect_harness",
    "expand_run_dir",
    "explain_miss",
    "export_runs",
    "field_diffs",
    "input_key",
    "new_run_id",
    "prompt_key",
    "read_harness_output",
    "read_ledger",
    "read_results",
    "record_run",
    "write_results",
]
