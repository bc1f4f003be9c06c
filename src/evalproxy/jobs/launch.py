"""What a job hands to ``evalproxy run`` and what it reads back from the job directory.

A job runs ``python -m evalproxy run -c <job_dir>/adapter_config_input.yaml -o <job_dir> --upstream URL
--model-id ID [--api-key-name NAME] -- <command>``: the same code as the ``run`` command, under
:mod:`evalproxy.jobs.wrap`, which writes the job's log and its exit status itself. The config file is
launcher-shaped, ``{target: {api_endpoint: {url, model_id, api_key_name, type, adapter_config}}}``, where
``adapter_config`` is the target's with the config's fields laid over it (a field the config sets replaces the
target's whole, ``interceptors`` included). Unless the merged config names a ``caching_dir``, jobs with the same
endpoint, adapter config, command and params share one cache under the data dir, so a re-submitted job replays
the answers a failed or cancelled one already paid for.

Everything here touches the disk and is called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import yaml

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.core.errors import ConfigError, JobLaunchError, JobsInvalidFieldError
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.adapter.registry import resolve
from evalproxy.adapter.server.output import RESULTS_FILES, STATISTICS_FILE
from evalproxy.jobs.models import expand_command
from evalproxy.jobs.tickets import CACHE_URL_ENV

CONFIG_INPUT = "adapter_config_input.yaml"
LOG_FILE = "evalproxy_run.log"
EXIT_FILE = "job_exit.json"
"""Written by the job's own process (:mod:`evalproxy.jobs.wrap`) when its command ends: ``{"returncode": N}``, with
``"reason"`` when the command could not start."""
RUN_RECORD = RESULTS_FILES[0]
MOUNTS = Path("/proc/mounts")
SHARED_FILESYSTEMS = frozenset({"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "sshfs", "glusterfs", "beegfs",
                                "9p", "afs", "orangefs", "pvfs2"})
"""Filesystem types (the part after ``fuse.`` too) a disk cache must not live on when jobs run on several machines."""


def merged_adapter_config(target: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {**(target["api_endpoint"].get("adapter_config") or {}), **(config.get("adapter_config") or {})}


def check_adapter_config(adapter_config: dict[str, Any], *, field: str) -> None:
    """Refuse an adapter config ``evalproxy run`` would refuse, naming the field under ``field``.

    Interceptor and hook names are resolved too, unless the config asks for ``discovery`` (user modules): those are
    imported by the job's own proxy, never into the service.
    """
    try:
        loaded = parse_config({"adapter_config": adapter_config})
        discovery = adapter_config.get("discovery")
        if not (isinstance(discovery, dict) and (discovery.get("modules") or discovery.get("dirs"))):
            resolve(loaded)
    except ConfigError as exc:
        inner = (exc.field or "").removeprefix("adapter_config").lstrip(".")
        path = f"{field}.{inner}" if inner and not inner.startswith("[") else f"{field}{inner}"
        raise JobsInvalidFieldError(f"{path}: {exc.reason}", field=path) from None


def cache_dir(root: Path, target: dict[str, Any], config: dict[str, Any]) -> Path:
    """The shared cache of every job with this endpoint, adapter config, command and params."""
    endpoint = target["api_endpoint"]
    identity = {
        "endpoint": {k: endpoint.get(k) for k in ("url", "model_id", "type")},
        "adapter_config": merged_adapter_config(target, config),
        "command": config["command"],
        "params": config["params"],
    }
    digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return root / digest[:16]


def _caching_entry(adapter: dict[str, Any]) -> dict[str, Any]:
    """The caching interceptor's config in an adapter config (``{}`` when it has none or names it bare)."""
    for entry in adapter.get("interceptors") or []:
        if isinstance(entry, dict) and entry.get("name") == "caching":
            config = entry.get("config")
            return config if isinstance(config, dict) else {}
    return {}


def store_url(target: dict[str, Any], config: dict[str, Any], service_url: str | None) -> str | None:
    """The store URL the job's proxy gets with ``--cache-url``: the service's (``jobs serve --cache-url``), with a
    prefix of its own per cache identity (jobs of one endpoint, adapter config, command and params share answers,
    as on disk); None when the service has none or the adapter config names its own store (``cache_url``,
    ``cache_dir`` or ``caching_dir``)."""
    adapter = merged_adapter_config(target, config)
    caching = _caching_entry(adapter)
    if service_url is None or adapter.get("caching_dir") or caching.get("cache_url") or caching.get("cache_dir"):
        return None
    parts = urlsplit(service_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), "evalproxy:")
    own = f"{prefix}jobs:{cache_dir(Path(), target, config).name}:"
    query = [(k, v) for k, v in query if k != "prefix"] + [("prefix", own)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def disk_cache(target: dict[str, Any], config: dict[str, Any], cache_root: Path,
               cache_url: str | None) -> Path | None:
    """The directory the job's answers are kept in, or None when they go to a store server."""
    adapter = merged_adapter_config(target, config)
    caching = _caching_entry(adapter)
    if cache_url or caching.get("cache_url"):
        return None
    return Path(caching.get("cache_dir") or adapter.get("caching_dir") or cache_dir(cache_root, target, config))


def fs_type(path: Path, mounts_file: Path = MOUNTS) -> str | None:
    """The filesystem type (``ext4``, ``nfs4``, ``lustre``) of the mount that holds ``path``, from /proc/mounts."""
    try:
        mounts = mounts_file.read_text(encoding="utf-8")
    except OSError:
        return None
    where = path.resolve()
    best, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
        if (where == point or point in where.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def check_cache_filesystem(directory: Path, mounts_file: Path = MOUNTS) -> None:
    """Refuse a disk cache on a filesystem shared between machines, where SQLite's locks do not hold."""
    kind = fs_type(directory, mounts_file)
    if kind is not None and kind.split(".")[-1] in SHARED_FILESYSTEMS:
        raise JobLaunchError(
            f"the job's disk cache {directory} is on {kind}, a filesystem shared between machines where SQLite's "
            "locks do not hold (two nodes would damage it): give evalproxy jobs serve --cache-url "
            "redis://HOST:6379/0, or a cache_url in the target's caching interceptor")


def launch_config(target: dict[str, Any], config: dict[str, Any], cache: Path) -> dict[str, Any]:
    adapter = merged_adapter_config(target, config)
    adapter.setdefault("caching_dir", str(cache))
    ep = target["api_endpoint"]
    endpoint: dict[str, Any] = {"url": ep["url"], "model_id": ep["model_id"], "type": ep["type"]}
    if ep.get("api_key_name"):
        endpoint["api_key_name"] = ep["api_key_name"]
    endpoint["adapter_config"] = adapter
    out: dict[str, Any] = {"target": {"api_endpoint": endpoint}}
    if config.get("auto_export"):
        out["export"] = config["auto_export"]  # the run exports when it ends (evalproxy.records.auto_export)
    return out


def prepare(job_dir: Path, target: dict[str, Any], config: dict[str, Any], cache_root: Path,
            python: str, cache_url: str | None = None) -> list[str]:
    """Write the job's config file; the argv that runs the job: ``evalproxy run`` under the wrapper that writes its
    log and exit status (:mod:`evalproxy.jobs.wrap`)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / EXIT_FILE).unlink(missing_ok=True)
    cache = cache_dir(cache_root, target, config)
    cfg = job_dir / CONFIG_INPUT
    cfg.write_text(yaml.safe_dump(launch_config(target, config, cache), sort_keys=False), encoding="utf-8")
    ep = target["api_endpoint"]
    wrap = [python, "-m", "evalproxy.jobs.wrap", "--log", str(job_dir / LOG_FILE), "--exit-file",
            str(job_dir / EXIT_FILE)]
    argv = [python, "-m", "evalproxy", "run", "-c", str(cfg), "-o", str(job_dir),
            "--upstream", ep["url"], "--model-id", ep["model_id"]]
    if ep.get("api_key_name"):
        wrap += ["--secret-env", ep["api_key_name"]]
        argv += ["--api-key-name", ep["api_key_name"]]
    if cache_url:  # by the name of the variable that holds it: a password in the URL stays out of `ps` (and logs)
        wrap += ["--secret-env", CACHE_URL_ENV]
        argv += ["--cache-url-env", CACHE_URL_ENV]
    return [*wrap, "--", *argv, "--", *expand_command(config, model_id=ep["model_id"], output_dir=str(job_dir))]


EXIT_FILE_MAX = 64 * 1024
"""The most of an exit file that is read (it holds a status and a line of reason: anything bigger is not one)."""


def _exit_record(job_dir: Path) -> dict[str, Any]:
    """What the job's process wrote into its exit file, or ``{}`` (none yet, unreadable, or not an exit file)."""
    try:
        with open(job_dir / EXIT_FILE, "rb") as f:
            data = orjson.loads(f.read(EXIT_FILE_MAX + 1))
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_exit(job_dir: Path) -> int | None:
    """The exit status the job's process wrote when its command ended, or None (still running, or killed)."""
    code = _exit_record(job_dir).get("returncode")
    return code if isinstance(code, int) else None


def read_exit_reason(job_dir: Path) -> str | None:
    """Why the job's process ended before its command ran (it could not fetch its secrets), when it wrote why."""
    reason = _exit_record(job_dir).get("reason")
    return reason[:500] if isinstance(reason, str) and reason else None


def answered(job_dir: Path) -> int | None:
    """Requests the job's proxy has answered so far (from upstream or cache), or None before the first report."""
    try:
        data = orjson.loads((job_dir / STATISTICS_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    total = 0
    for section, key in (("response_stats", "count"), ("caching", "hits")):
        part = data.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, int):
            total += value
    return total


def _scores_of(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    inner = data["results"] if isinstance(data.get("results"), dict) else data
    if not any(isinstance(inner.get(k), dict) for k in ("tasks", "groups")):
        return None
    return {"tasks": inner.get("tasks") or {}, "groups": inner.get("groups") or {}}


def read_results(job_dir: Path) -> dict[str, Any] | None:
    """``{tasks, groups}`` from the run record ``results.yaml``, else from a results file the harness wrote."""
    record = job_dir / RUN_RECORD
    found = [p for p in job_dir.rglob("results.y*ml") if p.name in RESULTS_FILES and p != record and p.is_file()]
    found.sort(key=lambda p: (len(p.parts), str(p)))
    for path in ([record] if record.is_file() else []) + found:
        try:
            scores = _scores_of(read_yaml(path))
        except (OSError, ConfigError):
            continue
        # A run record of a harness evalproxy could not read has no scores: the harness's own file may have them.
        if scores is not None and (scores["tasks"] or scores["groups"]):
            return scores
    return None
