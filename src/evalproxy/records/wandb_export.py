"""Export run records to Weights & Biases (needs ``evalproxy[wandb]``; ``WANDB_MODE=offline`` keeps it local).

Keys and names are NeMo Evaluator launcher's: ``entity``, ``project``, ``log_mode`` (``per_task``: one W&B run per
task; ``multi_task``: one per evaluation run), ``name``, ``group`` (default the invocation id), ``job_type``
(``evaluation``), ``tags``, ``description`` (the run's notes), ``extra_metadata`` (into the run's config). Runs are
named ``eval-{invocation}-{task}`` / ``eval-{invocation}``; each has an artifact of type ``evaluation_result`` with
the run's record, statistics, config and harness output, a config with the ids, harness, benchmark, command and
results dir, and its metrics (``define_metric(summary="last")``, logged at the task's index, then the summary).

Unlike the launcher, metric names always carry the task (``{task}/{metric}/{score}``), so a multi-task run keeps
every task's scores; the curated proxy statistics go under ``proxy/``. The W&B run id is derived from the
invocation (and task): exporting the same run again resumes and updates that W&B run instead of adding one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from evalproxy.records.export_data import RunView, read_run, stable_id


class WandbSettings(BaseModel):
    """The launcher's ``export.wandb`` keys (its ``copy_artifacts``/``copy_logs`` knobs are not kept: the run's files
    always go, logs never)."""

    model_config = ConfigDict(extra="forbid")

    entity: str | None = None
    project: str = "evalproxy"
    log_mode: Literal["per_task", "multi_task"] = "per_task"
    name: str | None = None
    group: str | None = None
    job_type: str = "evaluation"
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    extra_metadata: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
    """A W&B run id to use (multi_task), instead of the one derived from the invocation."""


def metrics_of(view: RunView, tasks: Sequence[str]) -> dict[str, float]:
    """``{task}/{metric}/{score}`` for ``tasks``, then ``proxy/{statistic}``."""
    out = {f"{task}/{name}": value for task in tasks for name, value in view.tasks[task].items()}
    out.update({f"proxy/{k}": v for k, v in view.stats.items()})
    return out


def _config(view: RunView, settings: WandbSettings, task: str | None) -> dict[str, Any]:
    ep = view.record.target.api_endpoint
    cfg: dict[str, Any] = {"invocation_id": view.invocation, "executor": "local", "model_id": ep.model_id,
                           "endpoint_type": ep.type, "launcher_command": view.record.command,
                           "results_dir": str(view.base.resolve()), "harness": view.harness}
    if task is not None:
        cfg.update(job_id=view.job_id(task), benchmark=task)
    else:
        cfg.update(benchmarks=list(view.tasks), harnesses=[view.harness])
    if view.record.config.params:
        cfg["params"] = view.record.config.params
    cfg.update(settings.extra_metadata)
    return cfg


def _artifact(wandb: Any, view: RunView, task: str | None, tmp: Path) -> Any:
    name = stable_id(view.invocation, task) if task else stable_id(view.invocation)
    meta: dict[str, Any] = {"invocation_id": view.invocation, "harness": view.harness}
    if task:
        meta.update(task=task, benchmark=task)
    art = wandb.Artifact(name=name, type="evaluation_result", description="Evaluation results", metadata=meta)
    root = f"{view.harness}.{task or 'all'}"
    for f in view.files():
        art.add_file(str(f), name=f"{root}/artifacts/{f.name}")
    meta_file = tmp / f"{name}-metadata.json"
    meta_file.write_bytes(orjson.dumps({**meta, "model_id": view.model, "tasks": view.tasks,
                                        "proxy_statistics": view.stats}, option=orjson.OPT_INDENT_2))
    art.add_file(str(meta_file), name=f"{root}/metadata.json")
    return art


def _one_run(wandb: Any, view: RunView, settings: WandbSettings, task: str | None, tmp: Path) -> str:
    """Create or resume the W&B run of ``view`` (one task, or all of them); its W&B run id."""
    tasks = [task] if task is not None else list(view.tasks)
    if task is not None:
        default_name, run_id = f"eval-{view.invocation}-{task}", stable_id("evalproxy", view.invocation, task)
    else:
        default_name, run_id = f"eval-{view.invocation}", settings.run_id or stable_id("evalproxy", view.invocation)
    args: dict[str, Any] = {
        "entity": settings.entity, "project": settings.project, "name": settings.name or default_name,
        "group": settings.group or view.invocation, "job_type": settings.job_type, "tags": settings.tags or None,
        "notes": settings.description, "config": _config(view, settings, task), "id": run_id, "resume": "allow",
        "dir": os.environ.get("WANDB_DIR") or None, "settings": wandb.Settings(silent=True, console="off"),
    }
    run = wandb.init(**{k: v for k, v in args.items() if v is not None})
    try:
        run.config.update(args["config"], allow_val_change=True)  # a resumed run gets this export's config
        metrics = metrics_of(view, tasks)
        run.log_artifact(_artifact(wandb, view, task, tmp))
        for k in metrics:
            run.define_metric(k, summary="last")
        run.log(metrics, step=list(view.tasks).index(task) if task is not None else 0)  # the launcher's step
        run.summary.update(metrics)
        return str(run.id)
    finally:
        run.finish()


def export_to_wandb(run_dirs: Sequence[str | os.PathLike[str]], settings: WandbSettings | None = None) -> list[str]:
    """One W&B run per task of each run directory (``per_task``) or per run directory (``multi_task``); returns the
    W&B run ids. A run without scores is skipped (with a warning by the caller: it gets no id)."""
    import wandb  # optional extra: imported only when exporting

    settings = settings or WandbSettings()
    ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="evalproxy-wandb-") as tmp:
        for run_dir in run_dirs:
            view = read_run(run_dir)
            if not view.tasks:
                continue
            if settings.log_mode == "multi_task":
                ids.append(_one_run(wandb, view, settings, None, Path(tmp)))
            else:
                ids.extend(_one_run(wandb, view, settings, task, Path(tmp)) for task in view.tasks)
    return ids
