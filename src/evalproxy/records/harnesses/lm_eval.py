"""lm-evaluation-harness: ``results_<date>.json`` under ``--output_path`` (per model), samples beside it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from evalproxy.records.harnesses.base import (
    HarnessResult,
    RunFacts,
    SampleScore,
    Status,
    add_score,
    arg_values,
    as_float,
    chat_text,
    load_json,
    load_json_lines,
    runs_program,
    sample_text,
)
from evalproxy.records.results import Results, ScoreStats, TaskResult

_RESULTS = re.compile(r"^results_(.+)\.json$")
_SKIP = frozenset({"alias", "name", "sample_len", "sample_count", " "})


class LmEvalParser:
    name = "lm-evaluation-harness"

    def matches(self, argv: Sequence[str]) -> bool:
        return runs_program(argv, ("lm_eval", "lm-eval"))

    def paths_from_args(self, argv: Sequence[str], workdir: Path) -> list[Path]:
        return [workdir / v for v in arg_values(argv, "--output_path", "--output-path", "-o")]

    def is_output(self, path: Path) -> bool:
        return bool(_RESULTS.match(path.name)) or (path.suffix == ".json" and _looks_like_results(path))

    def parse(self, files: list[Path]) -> HarnessResult:
        # A directory that several runs wrote to holds several results files: the newest is this run's.
        newest = max(files, key=lambda p: (p.stat().st_mtime, p.name))
        try:
            data = load_json(newest)
        except (OSError, ValueError) as e:
            return HarnessResult(self.name, "error", files=[newest], reason=f"unreadable results file: {e}")
        results = _scores(data)
        samples = _samples(newest, data)
        status: Status = "empty" if results.is_empty() else "success"
        return HarnessResult(self.name, status, results=results, samples=samples, files=[newest],
                             version=data.get("lm_eval_version"),
                             reason="the results file holds no scores" if status == "empty" else None,
                             facts=run_facts(data))


def _looks_like_results(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"results"' in head and (b'"configs"' in head or b'"versions"' in head or b'"n-shot"' in head)


def _split(key: str) -> tuple[str, str]:
    metric, _, flt = key.partition(",")
    return metric, flt or "none"


def _metric_name(metric: str, flt: str) -> str:
    return metric if flt == "none" else f"{metric}_{flt}"


def _scores(data: dict[str, Any]) -> Results:
    results = Results()
    group_names = {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
    counts = {t: (v or {}).get("effective") for t, v in (data.get("n-samples") or {}).items()}
    sections: list[tuple[dict[str, Any], bool]] = [(data.get("results") or {}, False),
                                                  (data.get("groups") or {}, True)]
    for block, are_groups in sections:
        for task, values in block.items():
            if not isinstance(values, dict):
                continue
            target = results.groups if (are_groups or task in group_names) else results.tasks
            stderrs = {}
            for key, v in values.items():
                metric, flt = _split(key)
                if metric.endswith("_stderr"):
                    stderrs[(metric[: -len("_stderr")], flt)] = as_float(v)
            for key, v in values.items():
                metric, flt = _split(key)
                value = as_float(v)
                if metric in _SKIP or metric.endswith("_stderr") or value is None or "," not in key:
                    continue
                name = _metric_name(metric, flt)
                stderr = stderrs.get((metric, flt))
                count = counts.get(task)
                stats = ScoreStats(stderr=stderr, count=count) if (stderr is not None or count) else None
                add_score(target, task, name, name, value, stats)
    for group in group_names:  # a group without an aggregate score is still the group the harness reports
        results.groups.setdefault(group, TaskResult())
    return results


def _samples(results_file: Path, data: dict[str, Any]) -> list[SampleScore]:
    m = _RESULTS.match(results_file.name)
    if not m:
        return []
    stamp = m.group(1)
    out: list[SampleScore] = []
    for task in (data.get("configs") or {}):
        path = results_file.with_name(f"samples_{task}_{stamp}.jsonl")
        if not path.exists():
            continue
        for row in load_json_lines(path):  # a torn or too-deep line is skipped, never the run record
            flt = row.get("filter", "none")
            answer = _first_text(row.get("filtered_resps")) or _first_text(row.get("resps"))
            question, target = _prompt(row.get("arguments")), sample_text(row.get("target"))
            for metric in row.get("metrics") or []:
                value = as_float(row.get(metric))
                if value is not None:
                    out.append(SampleScore(task=task, sample_id=str(row.get("doc_id")),
                                           metric=_metric_name(metric, flt), value=value, answer=answer,
                                           input=question, target=target))
    return out


def _first_text(resps: Any) -> str | None:
    """The first response as text: ``filtered_resps`` is ``["5"]``, ``resps`` is ``[["5"]]``."""
    while isinstance(resps, list) and resps:
        resps = resps[0]
    return resps if isinstance(resps, str) else None


def _prompt(arguments: Any) -> str | None:
    """The prompt lm-eval sent: the first request's first argument (``gen_args_0.arg_0``, or ``[[ctx, ...]]`` in
    older files); a chat-templated prompt is a JSON list of messages, shown as its text."""
    first: Any = None
    if isinstance(arguments, dict) and arguments:
        req = arguments.get("gen_args_0", next(iter(arguments.values())))
        first = req.get("arg_0") if isinstance(req, dict) else None
    elif isinstance(arguments, list) and arguments:
        first = arguments[0]
    if isinstance(first, list):
        first = first[0] if first else None
    if not isinstance(first, str):
        return sample_text(first)
    if first.startswith("[{"):
        try:
            messages = orjson.loads(first)
        except orjson.JSONDecodeError:
            return first
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            return chat_text(messages)
    return first


# lm-eval's API models and the endpoint each calls.
_MODEL_ENDPOINTS = {"local-completions": "completions", "openai-completions": "completions",
                    "local-chat-completions": "chat", "openai-chat-completions": "chat"}
# lm-eval's names (model_args, gen_kwargs, generation_kwargs) -> NeMo Evaluator's params.
_MODEL_ARGS = {"num_concurrent": "parallelism", "max_gen_toks": "max_new_tokens", "timeout": "request_timeout",
               "max_retries": "max_retries"}
_GEN_KWARGS = {"temperature": "temperature", "top_p": "top_p", "max_gen_toks": "max_new_tokens"}


def _kv(value: Any) -> dict[str, Any]:
    """``model_args``/``gen_kwargs`` as a mapping: lm-eval keeps the command line's ``a=1,b=x`` string or a dict."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return {}
    out: dict[str, Any] = {}
    for part in value.split(","):
        k, sep, v = part.partition("=")
        if sep:
            try:
                out[k.strip()] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[k.strip()] = v.strip()
    return out


def top_level_tasks(data: dict[str, Any]) -> list[str]:
    """The tasks and groups asked for: those of the results that are no other group's subtask."""
    subtasks = {t for subs in (data.get("group_subtasks") or {}).values() for t in subs or []}
    names = [*(data.get("results") or {}), *(data.get("group_subtasks") or {})]
    return sorted({n for n in names if n not in subtasks})


def run_facts(data: dict[str, Any]) -> RunFacts:
    """The task type, NeMo-named params and endpoint type that an lm-eval results file records."""
    config: dict[str, Any] = data["config"] if isinstance(data.get("config"), dict) else {}
    params: dict[str, Any] = {}
    task_gen = [(c or {}).get("generation_kwargs") for c in (data.get("configs") or {}).values()]
    for name, nemo in _GEN_KWARGS.items():  # a task's own generation_kwargs, where every task agrees
        values = {orjson.dumps(g.get(name)) for g in task_gen if isinstance(g, dict)}
        if len(values) == 1 and all(isinstance(g, dict) and name in g for g in task_gen):
            params[nemo] = orjson.loads(values.pop())
    for source, names in ((_kv(config.get("model_args")), _MODEL_ARGS), (_kv(config.get("gen_kwargs")), _GEN_KWARGS)):
        params.update({nemo: source[name] for name, nemo in names.items() if source.get(name) is not None})
    limit = config.get("limit")
    if isinstance(limit, int | float) and not isinstance(limit, bool):
        params["limit_samples"] = int(limit) if float(limit).is_integer() else limit  # lm-eval keeps 6 as 6.0
    tasks = top_level_tasks(data)
    if tasks:
        params["task"] = ",".join(tasks)
    endpoint = _MODEL_ENDPOINTS.get(str(config.get("model")))
    return RunFacts(type=",".join(tasks) or None, params=params, endpoint_type=endpoint,
                    task_endpoint_types={t: endpoint for t in (data.get("configs") or {})} if endpoint else {})
