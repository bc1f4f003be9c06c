"""Export destinations by name, for ``evalproxy export --dest`` and for exports when a run ends (auto-export).

Destinations: ``local`` (alias ``file``: ``processed_results.json``/``.csv``), ``mlflow``, ``wandb``, ``inspect``.
Their settings are NeMo Evaluator launcher's ``export.<dest>`` keys. A run exports when it ends to the destinations
its config names, in either place:

- a launcher file: ``execution.auto_export.destinations: [wandb, mlflow]`` with ``export.wandb: {...}``, ...;
- any evalproxy config file (its evalproxy-native place): a top-level ``export:`` with ``destinations`` beside the
  per-destination settings (``export: {destinations: [local], local: {output_dir: ...}}``);

and a job of the jobs service names them in its config's ``auto_export`` field (the same shape). An export that
fails when a run ends is a warning on stderr; the run, its record and its exit status stand.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evalproxy.adapter.config.schema import format_loc
from evalproxy.adapter.core.errors import ConfigError

DESTINATIONS = ("local", "file", "mlflow", "wandb", "inspect")
EXTRAS = {"mlflow": "the extra evalproxy[mlflow]", "wandb": "the extra evalproxy[wandb]",
          "inspect": "inspect-ai (pip install inspect-ai)", "local": "nothing", "file": "nothing"}
"""What each destination needs installed (imported only when exporting), for the message when it is missing."""


class LocalSettings(BaseModel):
    """The launcher's ``export.local`` keys."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = "."
    format: Literal["json", "csv"] = "json"


class InspectSettings(BaseModel):
    """Where inspect-ai logs go (default: ``inspect_logs/`` in each run's directory) and in which format."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str | None = None
    format: Literal["eval", "json"] = "eval"


class ExportPlan(BaseModel):
    """Which destinations a run exports to when it ends, and each destination's settings (raw: validated by the
    destination, so that a missing extra never stops a config from loading)."""

    model_config = ConfigDict(extra="forbid")

    destinations: list[Literal["local", "file", "mlflow", "wandb", "inspect"]] = Field(default_factory=list)
    local: dict[str, Any] = Field(default_factory=dict)
    file: dict[str, Any] = Field(default_factory=dict)
    mlflow: dict[str, Any] = Field(default_factory=dict)
    wandb: dict[str, Any] = Field(default_factory=dict)
    inspect: dict[str, Any] = Field(default_factory=dict)

    def settings(self, dest: str) -> dict[str, Any]:
        return dict((self.local or self.file) if dest in ("local", "file") else getattr(self, dest))


def plan_from_config(data: Mapping[str, Any], *, source: str | None = None) -> ExportPlan | None:
    """The export plan a config file declares (launcher or evalproxy-native shape, see the module), or None."""
    export = data.get("export")
    execution = data.get("execution")
    auto = execution.get("auto_export") if isinstance(execution, Mapping) else None
    if export is None and auto is None:
        return None
    raw: dict[str, Any] = {}
    if export is not None:
        if not isinstance(export, Mapping):
            raise ConfigError("must be a mapping", field="export", file=source)
        raw.update(export)
    if auto is not None:
        if not isinstance(auto, Mapping):
            raise ConfigError("must be a mapping", field="execution.auto_export", file=source)
        if "destinations" in auto:
            raw["destinations"] = auto["destinations"]
    return parse_plan(raw, field="export", source=source)


def parse_plan(raw: Mapping[str, Any], *, field: str = "auto_export", source: str | None = None) -> ExportPlan:
    """An :class:`ExportPlan` from a mapping; a ``ConfigError`` naming the field otherwise."""
    try:
        return ExportPlan.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"], field=format_loc(tuple(err["loc"]), field), file=source) from None


def _validated(model: type[BaseModel], settings: Mapping[str, Any], dest: str) -> Any:
    try:
        return model.model_validate(dict(settings))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"], field=format_loc(tuple(err["loc"]), f"export.{dest}")) from None


def export_to(dest: str, run_dirs: Sequence[str | os.PathLike[str]], settings: Mapping[str, Any]) -> list[str]:
    """Export ``run_dirs`` to ``dest`` with its ``settings``; what was written (paths, or the destination's run ids).

    Raises ``ConfigError`` for bad settings, ``ImportError`` when the destination's extra is missing, and whatever
    the destination's own library raises when it fails."""
    if dest in ("local", "file"):
        from evalproxy.records.export import export_runs

        local = _validated(LocalSettings, settings, dest)
        return [str(export_runs(run_dirs, local.output_dir, fmt=local.format))]
    if dest == "mlflow":
        from evalproxy.records.mlflow_export import MlflowSettings, export_to_mlflow

        return export_to_mlflow(run_dirs, _validated(MlflowSettings, settings, dest))
    if dest == "wandb":
        from evalproxy.records.wandb_export import WandbSettings, export_to_wandb

        return export_to_wandb(run_dirs, _validated(WandbSettings, settings, dest))
    if dest == "inspect":
        from evalproxy.records.inspect_export import export_to_inspect

        ins = _validated(InspectSettings, settings, dest)
        return [str(p) for p in export_to_inspect(run_dirs, output_dir=ins.output_dir, fmt=ins.format)]
    raise ConfigError(f"unknown export destination '{dest}' (known: {', '.join(DESTINATIONS)})", field="dest")


def run_auto_export(run_dir: str | os.PathLike[str], plan: ExportPlan) -> list[str]:
    """Export a finished run to each destination of ``plan``; a destination that fails is a warning on stderr (the
    others still run). Returns the destinations that succeeded. Blocking: call it from a thread."""
    done: list[str] = []
    for dest in plan.destinations:
        settings = plan.settings(dest)
        if dest in ("local", "file") and "output_dir" not in settings:
            settings["output_dir"] = str(Path(run_dir))  # beside the run's record, not wherever the run started
        try:
            written = export_to(dest, [run_dir], settings)
        except ImportError as exc:
            _warn(f"auto-export to {dest} skipped: it needs {EXTRAS[dest]}: {exc}")
        except Exception as exc:  # any library's failure: the run stands
            _warn(f"auto-export to {dest} failed: {type(exc).__name__}: {exc}")
        else:
            done.append(dest)
            print(f"evalproxy: exported to {dest}: {', '.join(written)}", file=sys.stderr, flush=True)
    return done


def _warn(message: str) -> None:
    print(f"evalproxy: WARNING: {message}", file=sys.stderr, flush=True)
