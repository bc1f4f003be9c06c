"""What a run record says about the run in NeMo Evaluator's terms, and where each fact came from.

``config.type`` is the launcher task (``--task``), else the harness's own record of it (nemo-evaluator's
``config.type``), else the harness's task names. ``config.params`` uses NeMo's names; each value is the harness's own
record of it (``harness``), else what the requests carried (``requests``), else the launcher task's param that was
given to the harness through its command (``launcher``). The endpoint type is the API the requests went to; per task,
the harness's word for it where it has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalproxy.records.harnesses import detect_harness
from evalproxy.records.harnesses.base import RunFacts, arg_values
from evalproxy.records.observed import ObservedParams
from evalproxy.records.results import Results

# Wire names -> NeMo Evaluator's params (only values every request shared: a NeMo param is one value).
WIRE_TO_NEMO = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_new_tokens",
                "max_completion_tokens": "max_new_tokens"}


@dataclass
class RecordFacts:
    """``config.type``/``config.params``, the run's endpoint type, and the extra data saying where each came from."""

    type: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    endpoint_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _wire_params(observed: ObservedParams | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (observed.params() if observed else {}).items():
        nemo = WIRE_TO_NEMO.get(name)
        if nemo is not None and not (isinstance(value, dict) and value.get("varied")):
            out.setdefault(nemo, value)
    return out


def record_facts(*, harness: RunFacts, observed: ObservedParams | None, results: Results,
                 task: str | None = None, launcher: Mapping[str, Any] | None = None,
                 configured_endpoint: str | None = None) -> RecordFacts:
    """The facts of one run from its three witnesses: the harness's record, the requests, the launcher config."""
    params: dict[str, Any] = {}
    params_from: dict[str, str] = {}
    for source, values in (("harness", harness.params), ("requests", _wire_params(observed)),
                           ("launcher", dict(launcher or {}))):
        for name, value in values.items():
            if name not in params:
                params[name], params_from[name] = value, source
    kind, kind_from = ((task, "--task") if task else (harness.type, "harness") if harness.type else (None, None))
    sent = observed.endpoint_type() if observed else None
    run_type = sent or harness.endpoint_type or configured_endpoint
    per_task = {t: harness.task_endpoint_types.get(t) or run_type for t in [*results.tasks, *results.groups]}
    extra: dict[str, Any] = {
        "type_from": kind_from, "params_from": params_from,
        "endpoint_types": {t: v for t, v in per_task.items() if v},
        "endpoint_type_from": "requests" if sent else "harness" if harness.endpoint_type else
                              "config" if configured_endpoint else None,
        "endpoint_paths": dict(observed.paths) if observed else {},
        "observed_params": observed.params() if observed else {},
    }
    return RecordFacts(type=kind, params=params, endpoint_type=run_type,
                       extra={k: v for k, v in extra.items() if v is not None})


def _count(values: list[str]) -> int | None:
    """The last ``--limit`` value as a sample count: ``N``, or inspect's range ``A-B``; None for a fraction."""
    if not values:
        return None
    text = values[-1]
    lo, sep, hi = text.partition("-")
    try:
        return int(hi) - int(lo) + 1 if sep else int(text)
    except ValueError:
        return None


def expected_answers(argv: Sequence[str], params: Mapping[str, Any]) -> int | None:
    """How many answers the run will ask for, where the command says (``--limit`` of lm-eval or inspect-ai, times
    lm-eval's ``--tasks`` and inspect-ai's ``--epochs``) or the launcher task's ``limit_samples``; None when unknown.
    One sample is one request for generation tasks; a total is a guide, not a promise."""
    parser = detect_harness(argv)
    limit = _count(arg_values(argv, "--limit", "--limit_samples", "--limit-samples"))
    if limit is None and isinstance(params.get("limit_samples"), int):
        limit = params["limit_samples"]
    if limit is None or limit <= 0:
        return None
    factor = 1
    if parser is not None and parser.name == "lm-evaluation-harness":
        tasks = arg_values(argv, "--tasks")
        factor = len([t for t in tasks[-1].split(",") if t]) if tasks else 1
    epochs = _count(arg_values(argv, "--epochs"))
    if parser is not None and parser.name == "inspect-ai" and epochs:
        factor = epochs
    return limit * max(factor, 1)
