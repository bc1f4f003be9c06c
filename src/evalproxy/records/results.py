"""The run record: NeMo Evaluator's ``results.yaml``, as a pydantic model with an atomic writer and a reader.

Top-level keys are NeMo's (``command``, ``config``, ``results``, ``target``, ``git_hash``); evalproxy's own facts sit
beside them under ``evalproxy`` (version, run ids, request count) and ``harness`` (which harness, which files the
scores came from, or why there are none). Unknown keys are kept on read, so a NeMo-written file round-trips.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.files import atomic_write_bytes
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.adapter.core.redact import REDACTED, redact_obj, redact_text, redact_url
from evalproxy.adapter.server.output import RESULTS_FILES

RESULTS_FILE = RESULTS_FILES[0]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ScoreStats(_Open):
    """Statistics behind one score; every field is optional (present only where known)."""

    count: int | None = None
    sum: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    stddev: float | None = None
    stderr: float | None = None


class Score(_Open):
    value: float
    stats: ScoreStats | None = None


class Metric(_Open):
    scores: dict[str, Score] = Field(default_factory=dict)


class TaskResult(_Open):
    metrics: dict[str, Metric] = Field(default_factory=dict)


class Results(_Open):
    tasks: dict[str, TaskResult] = Field(default_factory=dict)
    groups: dict[str, TaskResult] = Field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Scores flattened as NeMo's exporter names them: ``{task}_{metric}_{score}`` (tasks, then groups)."""
        out: dict[str, float] = {}
        for section in (self.groups, self.tasks):
            for task, tr in section.items():
                for metric, m in tr.metrics.items():
                    for score, s in m.scores.items():
                        out[f"{task}_{metric}_{score}"] = s.value
        return out

    def is_empty(self) -> bool:
        return not any(tr.metrics for tr in [*self.tasks.values(), *self.groups.values()])


class ApiEndpoint(_Open):
    url: str | None = None
    model_id: str | None = None
    type: str | None = None
    api_key_name: str | None = None
    adapter_config: dict[str, Any] = Field(default_factory=dict)


class Target(_Open):
    api_endpoint: ApiEndpoint = Field(default_factory=ApiEndpoint)


class RunConfig(_Open):
    """NeMo's ``config``: ``params`` by NeMo's names (``max_new_tokens``, ``temperature``, ...) and, as an extra key
    (read as ``model_extra["type"]``), ``type``: the task."""

    output_dir: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class HarnessInfo(_Open):
    """Where the scores came from: the harness, its version, the files read, or the reason there are none."""

    name: str | None = None
    version: str | None = None
    files: list[str] = Field(default_factory=list)
    status: str | None = None
    reason: str | None = None


class EvalproxyInfo(_Open):
    """evalproxy's own facts of a run. ``params_from`` says where each of ``config.params`` came from (``harness``:
    the harness's own record; ``launcher``: the launcher config's task params, given to the harness through its
    command; ``requests``: the requests sent), ``type_from`` the same of ``config.type``; ``endpoint_types`` is the
    endpoint type per task, ``endpoint_paths`` the requests per API path, ``observed_params`` every generation
    parameter as sent (wire names, with the counts of values that varied)."""

    version: str = ""
    run_id: str | None = None
    run_ids: list[str] = Field(default_factory=list)
    observed_requests: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    type_from: str | None = None
    params_from: dict[str, str] = Field(default_factory=dict)
    endpoint_types: dict[str, str] = Field(default_factory=dict)
    endpoint_type_from: str | None = None
    endpoint_paths: dict[str, int] = Field(default_factory=dict)
    observed_params: dict[str, Any] = Field(default_factory=dict)


class RunRecord(_Open):
    """One ``results.yaml``."""

    command: str = ""
    config: RunConfig = Field(default_factory=RunConfig)
    results: Results = Field(default_factory=Results)
    target: Target = Field(default_factory=Target)
    git_hash: str | None = None
    evalproxy: EvalproxyInfo = Field(default_factory=EvalproxyInfo)
    harness: HarnessInfo = Field(default_factory=HarnessInfo)

    @field_validator("command", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("git_hash", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        # As nemo-evaluator: ``git_hash: null`` when there is none (older evalproxy records wrote '').
        return None if v == "" else v


def evalproxy_version() -> str:
    try:
        return metadata.version("evalproxy")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


_SECRET_ASSIGN = re.compile(
    r"(?i)(\b[\w-]*(?:api[_-]?key|token|secret|password)\s*[=:]\s*)(?!\$)([^\s,'\"]+)"
)
_SECRET_FLAG = re.compile(r"(?i)^--?[\w-]*(api[_-]?key|token|secret|password)$")


def redact_command(command: str | Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The command as one shell-quoted line, with secret values (flags, ``key=value``, bearer tokens) as ``***``.

    ``$VAR`` references are kept: they name a secret without holding it.
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("$"):
            out.append(REDACTED)
        else:
            out.append(_SECRET_ASSIGN.sub(lambda m: m.group(1) + REDACTED, arg))
        hide_next = bool(_SECRET_FLAG.match(arg))
    return redact_text(shlex.join(out), secrets)


def git_hash(workdir: str | os.PathLike[str]) -> str | None:
    """The commit checked out in ``workdir`` (or a parent), None when it is not a git work tree. Blocking."""
    try:
        proc = subprocess.run(["git", "-C", str(workdir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def build_record(
    *,
    command: str | Sequence[str],
    output_dir: str | os.PathLike[str],
    params: Mapping[str, Any],
    results: Results | None = None,
    api_url: str | None = None,
    model_id: str | None = None,
    endpoint_type: str | None = None,
    api_key_name: str | None = None,
    adapter_config: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    run_ids: Sequence[str] = (),
    harness: HarnessInfo | None = None,
    observed_requests: int | None = None,
    started_at: str | None = None,
    finished_at: str | None = None,
    exit_code: int | None = None,
    secrets: Iterable[str] = (),
    config_type: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> RunRecord:
    """A run record with secrets redacted from the command, the URL and the adapter config. ``facts``: more of
    :class:`EvalproxyInfo`'s fields (where the params came from, endpoint types per task, ...)."""
    secrets = list(secrets)
    ids = list(run_ids) or ([run_id] if run_id else [])
    return RunRecord(
        command=redact_command(command, secrets),
        config=RunConfig(output_dir=str(output_dir), params=redact_obj(dict(params), secrets),
                         **({"type": config_type} if config_type else {})),
        results=results or Results(),
        target=Target(api_endpoint=ApiEndpoint(
            url=redact_url(api_url), model_id=model_id, type=endpoint_type, api_key_name=api_key_name,
            adapter_config=redact_obj(dict(adapter_config or {}), secrets),
        )),
        git_hash=git_hash(workdir) if workdir is not None else None,
        evalproxy=EvalproxyInfo(version=evalproxy_version(), run_id=run_id, run_ids=ids,
                                observed_requests=observed_requests, started_at=started_at,
                                finished_at=finished_at, exit_code=exit_code,
                                **redact_obj(dict(facts or {}), secrets)),
        harness=harness or HarnessInfo(),
    )


def _results_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in RESULTS_FILES:
            if (p / name).is_file():
                return p / name
        return p / RESULTS_FILE
    return p


def write_results(run_dir: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``run_dir/results.yaml`` atomically (temp file in the same dir, then ``os.replace``); returns the path."""
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / RESULTS_FILE
    data = record.model_dump(mode="json", exclude_none=True)
    data = {k: data.get(k) for k in ("command", "config", "results", "target", "git_hash")} | data  # null kept
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_atomic(target, text)
    return target


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` so that a reader sees the old file or the new one, never half of one."""
    atomic_write_bytes(target, text.encode())


def read_results(path: str | os.PathLike[str]) -> RunRecord:
    """Read a ``results.yaml`` (or NeMo's ``results.yml``) from a file or a run directory."""
    p = _results_path(path)
    try:
        data = read_yaml(p)
    except FileNotFoundError as e:
        raise ConfigError("no results.yaml here", file=str(p)) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=str(p)) from e
    if not isinstance(data, dict):
        raise ConfigError("results file is not a mapping", file=str(p))
    if "results" not in data and any(isinstance(data.get(k), dict) for k in ("tasks", "groups")):
        # the bare shape (tasks/groups at the top), as some harnesses write NeMo's results.yml: its results section
        data = {"results": {k: data[k] for k in ("tasks", "groups") if k in data},
                **{k: v for k, v in data.items() if k not in ("tasks", "groups")}}
    try:
        return RunRecord.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"not a results file: {e}", file=str(p)) from e
