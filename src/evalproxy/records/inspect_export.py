"""Export run records as inspect-ai logs, one per task, that ``inspect view`` opens and ``inspect log dump`` reads
(needs ``inspect-ai``, imported only here).

Each log holds the task's scores (``results``: one scorer per metric, its scores as the metric's values, as the run
record has them) and one sample per sample the harness scored: its input (the harness's question where the samples
file has it, else the request the proxy saw for it), its target, the model's answer as the harness received it (else
as the proxy's store holds it), each metric's score, and the request's latency, tokens and cache hit as metadata.
Logs are written with inspect-ai's own models and writer (``EvalLog`` + ``write_eval_log``), so any version of the
viewer that reads the installed version's logs reads these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from evalproxy.adapter.flow.shape import content_text
from evalproxy.records.export_data import RunView, SampleRow, finished_at, read_run, sample_rows, stable_id

LOG_DIR = "inspect_logs"
"""Where a run's logs go by default: in its own directory."""


def _messages(prompt: Any, text: str) -> list[Any]:
    """The request's messages as inspect chat messages (roles it has no class for, and empty ones, left out); a
    single user message with ``text`` when the request's body was not kept."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    kinds: dict[str, Any] = {"system": ChatMessageSystem, "developer": ChatMessageSystem, "user": ChatMessageUser,
                             "assistant": ChatMessageAssistant}
    out: list[Any] = []
    if isinstance(prompt, list):
        for msg in prompt:
            if isinstance(msg, Mapping) and msg.get("role") in kinds:
                content = content_text(msg.get("content"), "\n")
                if content:
                    out.append(kinds[str(msg["role"])](content=content))
    if not out:
        out.append(ChatMessageUser(content=(prompt if isinstance(prompt, str) else text) or "(input not recorded)"))
    return out


def _sample(row: SampleRow, model: str) -> Any:
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ChatCompletionChoice, ChatMessageAssistant, ModelOutput, ModelUsage
    from inspect_ai.scorer import Score

    x = row.exchange
    messages = _messages(x.prompt if x is not None else None, row.prompt_text)
    answer = row.answer_text
    usage = None
    meta: dict[str, Any] = {"task": row.task}
    if x is not None:
        if x.prompt_tokens is not None or x.completion_tokens is not None:
            i, o = x.prompt_tokens or 0, x.completion_tokens or 0
            usage = ModelUsage(input_tokens=i, output_tokens=o, total_tokens=i + o)
        meta.update({k: getattr(x, k) for k in ("latency_ms", "prompt_tokens", "completion_tokens", "cache_hit")
                     if getattr(x, k) is not None})
    reply = ChatMessageAssistant(content=answer, model=model)
    output = ModelOutput(model=model, choices=[ChatCompletionChoice(message=reply, stop_reason="stop")],
                         completion=answer, usage=usage,
                         time=x.latency_ms / 1000 if x is not None and x.latency_ms is not None else None)
    scores = {metric: Score(value=value, answer=row.answer) for metric, value in row.scores.items()}
    seconds = x.latency_ms / 1000 if x is not None and x.latency_ms is not None else None
    return EvalSample(id=row.sample_id, epoch=1, input=messages if len(messages) > 1 else messages[0].text,
                      target=row.target or "", messages=[*messages, reply], output=output, scores=scores,
                      metadata=meta, model_usage={model: usage} if usage else {}, total_time=seconds,
                      working_time=seconds)


def _results(view: RunView, task: str, n: int) -> Any:
    from inspect_ai.log import EvalMetric, EvalResults, EvalScore

    by_metric: dict[str, dict[str, float]] = {}
    for name, value in view.tasks[task].items():
        metric, score = name.split("/", 1)
        by_metric.setdefault(metric, {})[score] = value
    scores = [EvalScore(name=metric, scorer=metric, scored_samples=n,
                        metrics={s: EvalMetric(name=s, value=v) for s, v in values.items()})
              for metric, values in by_metric.items()]
    return EvalResults(total_samples=n, completed_samples=n, scores=scores)


def task_log(view: RunView, task: str, rows: Sequence[SampleRow]) -> Any:
    """The inspect ``EvalLog`` of one task of a run."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSpec, EvalStats

    ended = finished_at(view).astimezone(UTC).isoformat()
    started = view.record.evalproxy.started_at
    record = view.record
    spec = EvalSpec(
        eval_id=stable_id(view.invocation, task), run_id=view.invocation, created=ended, task=task,
        task_id=stable_id(view.invocation, task), dataset=EvalDataset(name=task, samples=len(rows)),
        model=view.model, model_base_url=record.target.api_endpoint.url, config=EvalConfig(),
        metadata={"evalproxy": {"run_dir": str(view.base.resolve()), "harness": view.harness,
                                "harness_version": record.harness.version, "command": record.command,
                                "params": record.config.params, "proxy_statistics": view.stats}},
    )
    status = "success" if record.harness.status in (None, "success") else "error"
    return EvalLog(eval=spec, status=status, results=_results(view, task, len(rows)),
                   stats=EvalStats(started_at=_iso_utc(started) or ended, completed_at=ended),
                   samples=[_sample(r, view.model) for r in rows])


def export_to_inspect(run_dirs: Sequence[str | os.PathLike[str]], *, output_dir: str | os.PathLike[str] | None = None,
                      fmt: Literal["eval", "json"] = "eval") -> list[Path]:
    """Write one inspect log per task of each run directory into ``output_dir`` (default: the run's own
    ``inspect_logs/``); returns their paths. Blocking: call it from a thread inside an event loop."""
    from inspect_ai.log import write_eval_log  # optional: imported only when exporting

    written: list[Path] = []
    for run_dir in run_dirs:
        view = read_run(run_dir)
        rows = sample_rows(view.base)
        out = Path(output_dir) if output_dir is not None else view.base / LOG_DIR
        out.mkdir(parents=True, exist_ok=True)
        stamp = finished_at(view).astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S+00-00")
        for task in view.tasks:
            target = out / f"{stamp}_{stable_id(task)}_{stable_id(view.invocation)}.{fmt}"
            write_eval_log(task_log(view, task, [r for r in rows if r.task == task]), str(target), format=fmt)
            written.append(target)
    return written


def _iso_utc(stamp: str | None) -> str | None:
    """A record's ISO time in UTC; None when it has none or it is not one (a hand-edited record still exports)."""
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).isoformat() if stamp else None
    except ValueError:
        return None
