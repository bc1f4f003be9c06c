"""Reading config files of every shape NeMo Evaluator accepts into :class:`LoadedConfig`.

A config file (YAML or JSON) may be

* a bare adapter_config: ``{interceptors: [...], post_eval_hooks: [...], ...}``;
* a launcher config: ``{target: {api_endpoint: {url, model_id, api_key_name, type, adapter_config}}}``;
* either of them with legacy flat keys (``use_caching``, ``use_system_prompt``, ...) in place of ``interceptors``.

Any shape may carry a ``server:`` mapping with :class:`ServerConfig` fields. Errors name the file and the field path.
Names of interceptors and hooks are checked against the registry one layer up
(:func:`evalproxy.adapter.registry.resolve`), not here.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

import evalproxy.adapter.config.completions as completions
import evalproxy.adapter.config.nemo04 as nemo04
from evalproxy.adapter.config.legacy import LEGACY_KEYS, convert_legacy
from evalproxy.adapter.config.schema import (
    AdapterConfig,
    InterceptorConfig,
    LoadedConfig,
    PostEvalHookConfig,
    ServerConfig,
    validation_error,
)
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.loads import load_json, load_yaml

log = logging.getLogger("evalproxy.config")

# Keys of a launcher config's api_endpoint that map onto ServerConfig.
_ENDPOINT_TO_SERVER = {"url": "upstream_url", "model_id": "model_id", "api_key_name": "api_key_name"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=str(p)) from exc
    if p.suffix == ".json":
        try:
            data = load_json(text)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON: {exc}", file=str(p)) from exc
    else:
        data = load_yaml(text, source=str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, not {type(data).__name__}", file=str(p))
    return data


def merge_adapter_configs(shared: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """``global_adapter_config`` under the local one, as NeMo Evaluator merges them: local keys win (a local
    ``interceptors`` list replaces the global one), ``discovery`` lists add up."""
    merged = {**shared, **local}
    g, lo = shared.get("discovery"), local.get("discovery")
    if isinstance(g, dict) and isinstance(lo, dict):
        merged["discovery"] = {**g, **lo, **{k: [*(g.get(k) or []), *(lo.get(k) or [])] for k in ("modules", "dirs")}}
    return merged


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` on ``base`` as the launcher merges configs (OmegaConf): mappings key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return over


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _adapter_of(nec: dict[str, Any]) -> dict[str, Any]:
    """The adapter_config inside one ``nemo_evaluator_config``: under ``target.api_endpoint`` (where NeMo Evaluator
    reads it), or under ``config.target.api_endpoint`` (where NeMo's launcher output docs write it); the first wins."""
    out: dict[str, Any] = {}
    for path in (("config", "target", "api_endpoint", "adapter_config"), ("target", "api_endpoint", "adapter_config")):
        found = dig(nec, *path)
        if isinstance(found, dict):
            out = deep_merge(out, found)
    return out


_MIGRATION = ("'overrides' is no longer read by NeMo Evaluator's launcher; put the settings under "
              "'nemo_evaluator_config' instead")


def launcher_task_configs(data: dict[str, Any], *, source: str | None = None) -> dict[str, dict[str, Any]]:
    """For each task of a launcher file, its merged ``nemo_evaluator_config`` (task over global), as the launcher
    builds it. Tasks without a name are keyed by their position."""
    evaluation = data.get("evaluation")
    if not isinstance(evaluation, dict):
        raise ConfigError("must be a mapping", field="evaluation", file=source)
    if evaluation.get("overrides"):
        raise ConfigError(_MIGRATION, field="evaluation.overrides", file=source)
    shared = evaluation.get("nemo_evaluator_config") or evaluation.get("config") or {}
    if not isinstance(shared, dict):
        raise ConfigError("must be a mapping", field="evaluation.nemo_evaluator_config", file=source)
    tasks = evaluation.get("tasks") or []
    if not isinstance(tasks, list):
        raise ConfigError("must be a list", field="evaluation.tasks", file=source)
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise ConfigError("must be a mapping", field=f"evaluation.tasks[{i}]", file=source)
        if t.get("overrides"):
            raise ConfigError(_MIGRATION, field=f"evaluation.tasks[{i}].overrides", file=source)
        own = t.get("nemo_evaluator_config") or t.get("config") or {}
        if not isinstance(own, dict):
            raise ConfigError("must be a mapping", field=f"evaluation.tasks[{i}].nemo_evaluator_config", file=source)
        out[str(t.get("name") or f"#{i}")] = deep_merge(shared, own)
    if not tasks:
        out[""] = shared
    return out


def _pick_task(data: dict[str, Any], task: str | None, source: str | None) -> tuple[str | None, list[str],
                                                                                         dict[str, Any]]:
    """(task, task names, that task's merged nemo_evaluator_config) of a launcher file."""
    per_task = launcher_task_configs(data, source=source)
    names = [n for n in per_task if n]
    if task is not None:
        if task not in per_task:
            raise ConfigError(f"no task '{task}' in this launcher config; its tasks: {', '.join(names) or '(none)'}",
                              field="evaluation.tasks", file=source)
        return task, names, per_task[task]
    relevant = {n: (_adapter_of(c), dig(c, "target", "api_endpoint", "type"), dig(c, "config", "output_dir"))
                for n, c in per_task.items()}
    distinct = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in relevant.values()}
    if len(distinct) > 1:
        raise ConfigError(
            "the tasks of this launcher config have different adapter configs; choose one with --task "
            f"(load_config(task=...)). Tasks: {', '.join(names)}", field="evaluation.tasks", file=source)
    first = next(iter(per_task))
    return (first or None) if len(per_task) == 1 else None, names, per_task[first]


def _drop_nones(d: dict[str, Any]) -> dict[str, Any]:
    """NeMo Evaluator's CLI and ``evaluate()`` deep-merge a file's adapter_config onto the framework's skipping null
    values (``core/input.py::validate_configuration``; lists are values): ``html_report_size: null`` in a file means
    the default, as there. (Its conversion called directly keeps a null; so does a config with a
    ``global_adapter_config``, which only that direct path reads.)"""
    return {k: _drop_nones(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


@dataclass
class _Shaped:
    """A file's adapter config (a dict, not validated yet) and server settings, by the file's shape."""

    adapter: dict[str, Any]
    prefix: str = ""
    server: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    tasks: list[str] = field(default_factory=list)
    shape: Literal["0.2.8", "0.4"] | None = None
    snapshot: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def _shaped(data: dict[str, Any], raw_server: dict[str, Any], task: str | None, source: str | None) -> _Shaped:
    """Where the adapter config sits in ``data``, which NeMo version the file is shaped as, and what it sets."""
    if nemo04.is_nemo04(data):
        parts = nemo04.convert(data, wanted=task, source=source)
        for unused in parts.unused:
            log.info("'%s' is NeMo Evaluator 0.4's runner's setting; the proxy does not use it", unused)
        for text in parts.warnings:
            log.warning("%s", text)
        return _Shaped(parts.adapter, f"services.{parts.service}.proxy" if parts.service else "proxy", parts.server,
                       parts.service, parts.services, "0.4", {**data, **({"server": raw_server} if raw_server else {})},
                       parts.warnings)
    if "target" in data or "evaluation" in data:
        adapter_data, prefix, server_data, task, tasks = _launcher_parts(data, task, source)
        out = _Shaped(adapter_data, prefix, server_data, task, tasks, "0.2.8")
    elif "adapter_config" in data:
        out = _Shaped(data.get("adapter_config") or {}, "adapter_config", shape="0.2.8")
    else:
        out = _Shaped({k: v for k, v in data.items() if k != "global_adapter_config"})
    if not isinstance(out.adapter, dict):
        raise ConfigError("must be a mapping", field=out.prefix or None, file=source)
    if LEGACY_KEYS & set(out.adapter):
        out.shape = "0.2.8"
    return out


def parse_config(
    data: dict[str, Any],
    *,
    source: str | None = None,
    task: str | None = None,
    strict: bool = False,
    default_chain: str = "nemo",
) -> LoadedConfig:
    """Turn a config mapping of any accepted shape into an :class:`AdapterConfig` and :class:`ServerConfig`.

    ``task`` picks a launcher file's task (its ``nemo_evaluator_config`` merged over the global one, over
    ``target.api_endpoint.adapter_config``). A config that lists no interceptors gets NeMo Evaluator's default chain
    (``caching, endpoint, response_stats``); ``default_chain="evalproxy"`` is for no config at all, and gets
    evalproxy's own (which adds ``reasoning``). ``strict`` is kept for :func:`evalproxy.adapter.registry.resolve`.
    """
    data = dict(data)
    warnings: list[str] = []
    raw_server = data.pop("server", None) or {}
    if not isinstance(raw_server, dict):
        raise ConfigError("must be a mapping", field="server", file=source)
    sections = {k: data.pop(k) for k in ("export",) if k in data}  # any shape may say where its runs export to
    if "target" in data or "evaluation" in data:
        sections.update({k: data[k] for k in ("execution",) if k in data})  # a launcher file's auto_export
    output = data.get("output")
    if isinstance(output, dict) and output.get("export") and "export" not in sections:  # a 0.4 file's exports
        export_config = output.get("export_config") or {}
        if not isinstance(export_config, dict):
            raise ConfigError("must be a mapping", field="output.export_config", file=source)
        sections["export"] = {**export_config, "destinations": output["export"]}

    shared: Any = data.get("global_adapter_config")
    if shared is not None and not isinstance(shared, dict):
        raise ConfigError("must be a mapping", field="global_adapter_config", file=source)
    sh = _shaped(data, raw_server, task, source)
    warnings += sh.warnings
    adapter_data, prefix, server_data, task, tasks = sh.adapter, sh.prefix, sh.server, sh.task, sh.tasks
    if isinstance(shared, dict):
        # NeMo reads global_adapter_config only in AdapterConfig.get_validated_config, which merges the two configs
        # as written: a null there is a value (html_report_size: null caps nothing), and a local null wins.
        _check_mixing(shared, "global_adapter_config", source)
        _check_mixing(adapter_data, prefix, source)
        adapter_data = merge_adapter_configs(shared, adapter_data)
    else:
        adapter_data = _drop_nones(adapter_data)

    server = _validated(ServerConfig, {**server_data, **raw_server}, "server", source)
    _check_top_level(adapter_data, prefix, source)
    adapter_data = _guard_completions(adapter_data, prefix, source, warnings)
    adapter_data, chain_from = _chain_of(adapter_data, shared is not None, prefix, source, strict, default_chain,
                                         warnings)
    adapter = _validated(AdapterConfig, adapter_data, prefix, source)
    if chain_from == "evalproxy":
        adapter = adapter.model_copy(update={"interceptors": default_interceptors(adapter)})
        if not adapter.post_eval_hooks and adapter.generate_html_report:
            adapter = adapter.model_copy(update={"post_eval_hooks": default_hooks(adapter)})
    launcher = sh.shape != "0.4" and ("target" in data or "evaluation" in data)
    run_params = _run_params(data, task, source) if launcher else {}
    return LoadedConfig(adapter=adapter, server=server, source=source, prefix=prefix, default_chain=chain_from,
                        task=task, tasks=tasks, strict=strict, warnings=warnings, shape=sh.shape,
                        snapshot=sh.snapshot, sections=sections, run_params=run_params)


def _run_params(data: dict[str, Any], task: str | None, source: str | None) -> dict[str, Any]:
    """A launcher-shaped file's ``config.params`` for ``task`` (the task's over the file's), unset ones left out."""
    run_cfg = data.get("config") if isinstance(data.get("config"), dict) else {}
    if isinstance(data.get("evaluation"), dict):
        _, _, nec = _pick_task(data, task, source)
        run_cfg = deep_merge(run_cfg, nec.get("config") or {})
    params = run_cfg.get("params") if isinstance(run_cfg, dict) else None
    return _drop_nones(params) if isinstance(params, dict) else {}


def _check_top_level(cfg: dict[str, Any], where: str, source: str | None) -> None:
    """A top-level key that is neither an adapter_config field nor a legacy key is an error with the closest name.

    (NeMo Evaluator ignores such a key beside ``interceptors`` and refuses it without: a typo like ``interceptor``
    would silently give the default chain, so it is refused here in both cases.)"""
    known = set(AdapterConfig.model_fields) | LEGACY_KEYS
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            if nemo04.version_note(str(key)):  # a 0.4 proxy key written in an adapter config
                hint = f" ({nemo04.version_note(str(key))}: it belongs under a 0.4 file's 'proxy:')" + hint
            p = f"{where}." if where else ""
            raise ConfigError(f"unknown adapter_config field '{key}'{hint}", field=f"{p}{key}", file=source)


def _guard_completions(cfg: dict[str, Any], where: str, source: str | None, warnings: list[str]) -> dict[str, Any]:
    """A completions config (``endpoint_type: completions``) holding chat-template controls, as NeMo 0.4 judges a
    legacy adapter_config: a boolean toggle is an error naming the field (unless allowed by the environment); any
    other such field is removed, with a warning."""
    if str(cfg.get("endpoint_type", "chat")).strip().lower() != "completions":
        return cfg
    found = completions.scan(cfg, where)
    if not found:
        return cfg
    what = "the adapter config of a completions endpoint"
    if found.toggles and not completions.allowed_by_env():
        raise ConfigError(completions.explain(found, what, fatal=True), field=found.toggles[0], file=source)
    text = completions.explain(found, what, fatal=False)
    log.warning("%s", text)
    warnings.append(text)
    stripped: dict[str, Any] = completions.strip(cfg)
    return stripped


def _check_mixing(cfg: dict[str, Any], where: str, source: str | None) -> None:
    """NeMo Evaluator's rule, per config: legacy flat keys beside a non-empty ``interceptors`` list are an error."""
    legacy = sorted(k for k in cfg if k in LEGACY_KEYS)
    if legacy and cfg.get("interceptors"):
        p = f"{where}." if where else ""
        raise ConfigError(
            f"legacy flat keys ({', '.join(legacy)}) cannot be mixed with an explicit 'interceptors' "
            "list; move their settings into the interceptors' config",
            field=f"{p}{legacy[0]}",
            file=source,
        )


def default_interceptors(adapter: AdapterConfig) -> list[InterceptorConfig]:
    """evalproxy's own default chain, used with no config file at all: reasoning, caching, endpoint, response_stats.

    Unlike NeMo Evaluator's default (a file that lists no interceptors), it strips ``<think>...</think>`` blocks from
    answers; caching replays stored answers (``reuse_cached_responses: true``), as NeMo's default does.
    """
    caching: dict[str, Any] = {"reuse_cached_responses": True}
    if adapter.caching_dir:
        caching["cache_dir"] = adapter.caching_dir
    if adapter.generate_html_report:
        # The report shows saved pairs: save as many requests as it shows.
        caching["save_requests"] = True
        caching["max_saved_requests"] = adapter.html_report_size if adapter.html_report_size is not None else 5
    return [
        InterceptorConfig(name="reasoning"),
        InterceptorConfig(name="caching", config=caching),
        InterceptorConfig(name="endpoint"),
        InterceptorConfig(name="response_stats"),
    ]


def default_hooks(adapter: AdapterConfig) -> list[PostEvalHookConfig]:
    return [
        PostEvalHookConfig(
            name="post_eval_report",
            config={"report_types": ["html", "json"],
                    "html_report_size": 5 if adapter.html_report_size is None else adapter.html_report_size},
        )
    ]


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
    strict: bool = False,
) -> LoadedConfig:
    """Read a config file (or none), apply server ``overrides`` (from the CLI: they win), validate the schema.

    A file that lists no interceptors means NeMo Evaluator's default chain; no file at all means evalproxy's own
    default chain (with ``reasoning``). ``task``: a launcher file's task. ``strict``: unknown params are errors.
    """
    data = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else None
    loaded = parse_config(data, source=source, task=task, strict=strict,
                          default_chain="nemo" if path is not None else "evalproxy")
    if overrides:
        clean = {k: v for k, v in overrides.items() if v is not None}
        try:
            loaded.server = ServerConfig.model_validate({**loaded.server.model_dump(exclude_unset=True), **clean})
        except ValidationError as exc:
            raise validation_error(exc, prefix="server", file="command line") from None
    return loaded


def _launcher_parts(data: dict[str, Any], task: str | None, source: str | None
                    ) -> tuple[Any, str, dict[str, Any], str | None, list[str]]:
    """(adapter config, its field prefix, server settings, task, tasks) of a launcher-shaped file: the adapter
    config under ``target.api_endpoint``, merged with the task's ``nemo_evaluator_config`` as the launcher does."""
    server_data: dict[str, Any] = {}
    tasks: list[str] = []
    target = data.get("target") or {}
    endpoint = target.get("api_endpoint") if isinstance(target, dict) else None
    if not isinstance(endpoint, dict):
        if "evaluation" not in data:
            raise ConfigError("a launcher config needs a mapping here", field="target.api_endpoint", file=source)
        endpoint = {}
    run_cfg = data.get("config")
    adapter_data = endpoint.get("adapter_config") or {}
    prefix = "target.api_endpoint.adapter_config"
    endpoint_type = endpoint.get("type")
    if "evaluation" in data:
        task, tasks, nec = _pick_task(data, task, source)
        if isinstance(adapter_data, dict):
            adapter_data = deep_merge(adapter_data, _adapter_of(nec))
        endpoint_type = dig(nec, "target", "api_endpoint", "type") or endpoint_type
        run_cfg = deep_merge(run_cfg or {}, nec.get("config") or {})
        if tasks:
            prefix = (f"evaluation.tasks[{task or tasks[0]}].nemo_evaluator_config"
                      ".target.api_endpoint.adapter_config")
    for k, v in _ENDPOINT_TO_SERVER.items():
        if endpoint.get(k) is not None:
            server_data[v] = endpoint[k]
    if isinstance(run_cfg, dict) and isinstance(run_cfg.get("output_dir"), str):
        server_data["output_dir"] = run_cfg["output_dir"]  # the run config's output dir, as NeMo uses it
    if endpoint_type and isinstance(adapter_data, dict) and "endpoint_type" not in adapter_data:
        adapter_data = {**adapter_data, "endpoint_type": endpoint_type}  # the task's own type
    return adapter_data, prefix, server_data, task, tasks


def _chain_of(adapter_data: dict[str, Any], shared: bool, prefix: str, source: str | None, strict: bool,
              default_chain: str, warnings: list[str]) -> tuple[dict[str, Any], Literal["nemo", "evalproxy"] | None]:
    """The adapter config with its chain decided, and which default chain filled it (None: the config lists its
    interceptors). Legacy keys convert to NeMo's chain; mixing them with a list is an error, unless one of two merged
    configs (``shared``: a global_adapter_config) holds each, as NeMo drops the legacy keys then."""
    legacy = {k: adapter_data[k] for k in list(adapter_data) if k in LEGACY_KEYS}
    chain_from: Literal["nemo", "evalproxy"] | None = None
    if legacy:
        adapter_data = {k: v for k, v in adapter_data.items() if k not in LEGACY_KEYS}
    if adapter_data.get("interceptors"):
        if legacy and not shared:
            _check_mixing({**legacy, "interceptors": adapter_data["interceptors"]}, prefix, source)
        elif legacy:
            # One of the two configs lists interceptors and the other legacy keys: NeMo Evaluator uses the list and
            # drops the legacy keys without a word. Same here, but said.
            text = (f"legacy keys {', '.join(sorted(legacy))} are ignored: the merged adapter config lists "
                    "interceptors (as NeMo Evaluator does)")
            if strict:
                raise ConfigError(text, field=prefix or None, file=source)
            log.warning("%s", text)
            warnings.append(text)
    elif default_chain == "evalproxy" and not legacy:
        chain_from = "evalproxy"
    else:
        # No interceptors: NeMo Evaluator's legacy conversion, which is also its default chain.
        adapter_data = convert_legacy(legacy, adapter_data, source=source, prefix=prefix)
        chain_from = "nemo"
    return adapter_data, chain_from


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], data: dict[str, Any], prefix: str, source: str | None) -> M:
    """``data`` as a ``model``, or a ConfigError naming the file and the field path under ``prefix``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix=prefix, file=source) from None
