"""A NeMo Evaluator 0.4-shaped file (``services:``, ``proxy:``, ``output:``) as an adapter config and server settings.

0.4 (the ``nel`` CLI) describes a run as services, benchmarks and an output section; the adapter proxy in front of a
model service is configured by the service's ``proxy:`` mapping. What those keys mean there, and here:

* the service (``type: api``; a managed server's ``port`` gives ``http://localhost:PORT/v1``, which evalproxy does
  not start): ``url`` the upstream, ``model`` the model id, ``api_key: ${ENV}`` the env var holding the key (a
  literal key is refused: secrets stay out of files), ``protocol`` the endpoint type, ``generation`` parameters set
  on every request (0.4 adds them with a ``payload_modifier``);
* ``proxy.interceptors`` the chain, in 0.4's names and meanings: ``caching`` with ``cache_dir``/``bypass`` always
  replays and keys by session (``session_prefix``), as 0.4's does;
* ``extra_body`` / ``extra_headers`` (and ``generation``): set on every request (top-level keys replaced, header
  names case-insensitive) by a ``payload_modifier`` after the listed interceptors, but before ``caching``: 0.4 merges
  them after its cache key is taken, so a changed ``extra_body`` or ``generation`` still replays old answers there;
  here the key covers them (stricter);
* ``request_timeout`` (120), ``max_retries`` (0), ``retry_on_status`` (429, 502, 503, 504),
  ``max_concurrent_upstream`` (64): the server's settings of those names (``max_concurrent_requests``), 0.4's defaults;
* ``finish_reason_fixup`` (true): ``finish_reason`` last before ``endpoint``, moved there if listed, as 0.4 does;
* ``verbose``: 0.4 turns on its server's access log; here the ``logging`` interceptor, first in the chain;
* ``model_traffic``: the ``model_traffic`` interceptor just before ``endpoint`` with those capture switches (0.4
  always captures); and the ``completions_guard`` before it (0.4's endpoint always checks);
* ``output.dir`` the output dir, ``output.report`` the formats of the ``post_eval_report`` hook (markdown, html,
  latex, csv, json; 0.4's default ``[markdown]``); the file itself is kept as ``full_config.yaml`` in the run dir,
  ``${ENV}`` references unexpanded, as 0.4 snapshots it.

``benchmarks``, ``sandboxes``, ``cluster`` and the rest of ``output`` are 0.4's runner's, accepted and not used. A
0.2.8 key in a 0.4 file (``target``, ``adapter_config``, ``use_caching`` ...) is an error naming both versions.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import evalproxy.adapter.config.completions as completions
from evalproxy.adapter.config.legacy import LEGACY_KEYS
from evalproxy.adapter.core.errors import ConfigError

SHAPE_KEYS = frozenset({"services", "benchmarks", "sandboxes", "cluster", "output", "proxy"})
"""Top-level keys of a 0.4 file (``proxy`` alone: the proxy section of one service, written at the top)."""
EVALPROXY_KEYS = frozenset({"server", "discovery", "service"})
"""evalproxy's own keys, allowed beside them (``service``: which of the file's services to serve)."""
PROXY_DEFAULTS: dict[str, Any] = {
    "interceptors": [], "verbose": False, "extra_body": {}, "extra_headers": {}, "request_timeout": 120.0,
    "max_retries": 0, "retry_on_status": [429, 502, 503, 504], "max_concurrent_upstream": 64, "model_traffic": {},
    "finish_reason_fixup": True,
}
TRAFFIC_KEYS = frozenset({"capture_tool_calls", "capture_reasoning", "capture_messages", "capture_request_body",
                          "max_content_chars"})
OUTPUT_KEYS = frozenset({"dir", "timestamped", "progress_interval", "report", "export", "export_config",
                         "trajectories"})
REPORT_FORMATS = ("markdown", "html", "latex", "csv", "json")
_SERVER_OF_PROXY = {"request_timeout": "request_timeout", "max_retries": "max_retries",
                    "retry_on_status": "retry_on_status", "max_concurrent_upstream": "max_concurrent_requests"}
_MANAGED = frozenset({"vllm", "sglang", "nim", "docker_model", "dynamo"})
_PROTOCOLS = {"chat_completions": "chat", "completions": "completions", "responses": "responses"}
_ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
# Keys of NeMo Evaluator 0.2.8 files, for errors that say which version a key belongs to.
V028_KEYS = frozenset({"target", "evaluation", "adapter_config", "global_adapter_config", "interceptors",
                       "post_eval_hooks", "endpoint_type", "caching_dir", "generate_html_report",
                       "html_report_size", "log_failed_requests", "tracking_requests_stats", "mode", "config",
                       "execution", "deployment", "defaults"}) | LEGACY_KEYS


def is_nemo04(data: dict[str, Any]) -> bool:
    return bool(SHAPE_KEYS & set(data))


def version_note(key: str) -> str:
    """'a NeMo Evaluator 0.2.8 key', '... 0.4 key', or '' for a key of neither."""
    if key in V028_KEYS:
        return "a NeMo Evaluator 0.2.8 key"
    if key in SHAPE_KEYS or key in PROXY_DEFAULTS or key in OUTPUT_KEYS:
        return "a NeMo Evaluator 0.4 key"
    return ""


@dataclass
class Parts:
    """What a 0.4 file gives: the adapter config (as a dict, validated later), server settings, the service served,
    the services a file offers, what was accepted without effect, and the file as the snapshot keeps it."""

    adapter: dict[str, Any]
    server: dict[str, Any]
    service: str | None
    services: list[str]
    unused: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _refuse_028(data: dict[str, Any], where: str, source: str | None) -> None:
    p = f"{where}." if where else ""
    for key in data:
        if key in V028_KEYS:
            raise ConfigError(f"'{key}' is a NeMo Evaluator 0.2.8 key, and this file is 0.4-shaped ("
                              f"{', '.join(sorted(SHAPE_KEYS & set(data)) or ['proxy:'])}); in 0.4 the adapter "
                              "is configured under a service's 'proxy:' (interceptors, extra_body, ...)",
                              field=f"{p}{key}", file=source)


def _unknown(key: str, known: frozenset[str] | set[str], where: str, source: str | None) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    note = version_note(key)
    text = f"unknown key '{key}'" + (f" ({note}, not one of {where}'s)" if note else "")
    return ConfigError(text + (f"; did you mean '{close[0]}'?" if close else ""), field=f"{where}.{key}", file=source)


def _solver_services(benchmarks: Any) -> set[str]:
    """The services the benchmarks' solvers name (a judge service is named elsewhere, by scoring)."""
    named = set()
    for b in benchmarks if isinstance(benchmarks, list) else ():
        solver = b.get("solver") if isinstance(b, dict) else None
        if isinstance(solver, dict) and isinstance(solver.get("service"), str):
            named.add(solver["service"])
    return named


def _pick_service(services: dict[str, Any], wanted: str | None, benchmarks: Any,
                  source: str | None) -> tuple[str | None, list[str]]:
    """The service to serve: the one named, else the only model service, else the only one the solvers use."""
    models = [n for n, s in services.items() if isinstance(s, dict) and (s.get("type", "api") in _MANAGED | {"api"})]
    if wanted is not None:
        if wanted not in services:
            raise ConfigError(f"no service '{wanted}' in this file; its model services: {', '.join(models) or '-'}",
                              field="services", file=source)
        return wanted, models
    solved = [n for n in models if n in _solver_services(benchmarks)]
    if len(models) > 1 and len(solved) == 1:
        return solved[0], models
    if len(models) > 1:
        raise ConfigError(f"this file has several model services ({', '.join(models)}); choose one with --task "
                          "SERVICE (or 'service:' at the top)", field="services", file=source)
    return (models[0] if models else None), models


def _service_parts(name: str, svc: Any, source: str | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(server settings, adapter settings, proxy section) of one service."""
    where = f"services.{name}"
    if not isinstance(svc, dict):
        raise ConfigError("must be a mapping", field=where, file=source)
    server: dict[str, Any] = {}
    kind = svc.get("type", "api")
    if kind == "api":
        if not isinstance(svc.get("url"), str):
            raise ConfigError("a service of type api needs its url", field=f"{where}.url", file=source)
        server["upstream_url"] = svc["url"]
    else:  # a managed server: 0.4 starts it; evalproxy expects it running on its port
        server["upstream_url"] = f"http://localhost:{svc.get('port', 8000)}/v1"
    model = svc.get("served_model_name") or svc.get("model")
    if isinstance(model, str):
        server["model_id"] = model
    key = svc.get("api_key")
    if key is not None:
        m = _ENV_REF.match(str(key))
        if m is None:
            raise ConfigError("write the key as a reference to the env var holding it (api_key: ${MY_API_KEY}); "
                              "evalproxy never reads a key from a file", field=f"{where}.api_key", file=source)
        server["api_key_name"] = m.group(1)
    adapter: dict[str, Any] = {}
    protocol = svc.get("protocol")
    if protocol is not None:
        if protocol not in _PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(_PROTOCOLS)}", field=f"{where}.protocol",
                              file=source)
        adapter["endpoint_type"] = _PROTOCOLS[protocol]
    generation = svc.get("generation") or {}
    if not isinstance(generation, dict):
        raise ConfigError("must be a mapping", field=f"{where}.generation", file=source)
    adapter["generation"] = {k: v for k, v in generation.items() if v is not None}
    return server, adapter, svc.get("proxy")


def convert(data: dict[str, Any], *, wanted: str | None = None, source: str | None = None) -> Parts:
    """The parts of a 0.4-shaped file; ``wanted`` names the service to serve when it has several."""
    _refuse_028(data, "", source)
    for key in data:
        if key not in SHAPE_KEYS | EVALPROXY_KEYS:
            raise _unknown(key, SHAPE_KEYS | EVALPROXY_KEYS, "(top level)", source)
    services = data.get("services") or {}
    if not isinstance(services, dict):
        raise ConfigError("must be a mapping of service names to services", field="services", file=source)
    wanted = wanted or data.get("service")
    name, names = _pick_service(services, wanted, data.get("benchmarks"), source)
    server: dict[str, Any] = {}
    adapter: dict[str, Any] = {"generation": {}}
    proxy, where = data.get("proxy"), "proxy"
    if name is not None:
        server, adapter, own = _service_parts(name, services[name], source)
        if own is not None and proxy is not None:
            raise ConfigError(f"services.{name}.proxy is set too; give the proxy section once", field="proxy",
                              file=source)
        if own is not None:
            proxy, where = own, f"services.{name}.proxy"
    out = Parts(adapter={}, server=server, service=name, services=names, snapshot=data)
    settings = _proxy_settings(proxy, where, source)
    if adapter.get("endpoint_type") == "completions":  # 0.4's guard, on the keys as the user wrote them
        settings["extra_body"], adapter["generation"], out.warnings = _guarded(
            settings["extra_body"], adapter["generation"], where, f"services.{name}.generation", source)
    for k, v in _SERVER_OF_PROXY.items():
        out.server[v] = settings[k]
    out.adapter = {"interceptors": _chain(settings, adapter.pop("generation"), name, where, source), **adapter}
    if "discovery" in data:
        out.adapter["discovery"] = data["discovery"]
    _output(data.get("output"), out, source)
    out.unused = sorted(k for k in ("benchmarks", "sandboxes", "cluster") if k in data)
    return out


def _guarded(extra_body: dict[str, Any], generation: dict[str, Any], where: str, gen_where: str,
             source: str | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A completions service's ``extra_body`` and ``generation`` under 0.4's completions guard: a boolean toggle in
    ``chat_template_kwargs`` is an error naming the field (unless allowed), any other chat-template field removed."""
    warnings: list[str] = []
    out = []
    for obj, path in ((extra_body, f"{where}.extra_body"), (generation, gen_where)):
        found = completions.scan(obj, path)
        if found and found.toggles and not completions.allowed_by_env():
            raise ConfigError(completions.explain(found, "a completions service", fatal=True),
                              field=found.toggles[0], file=source)
        if found:
            warnings.append(completions.explain(found, "a completions service", fatal=False))
        out.append(completions.strip(obj))
    return out[0], out[1], warnings


def _proxy_settings(proxy: Any, where: str, source: str | None) -> dict[str, Any]:
    if proxy is None:
        proxy = {}
    if not isinstance(proxy, dict):
        raise ConfigError("must be a mapping", field=where, file=source)
    for key in proxy:
        if key not in PROXY_DEFAULTS:
            raise _unknown(key, frozenset(PROXY_DEFAULTS), where, source)
    settings = {**PROXY_DEFAULTS, **{k: v for k, v in proxy.items() if v is not None}}
    traffic = settings["model_traffic"]
    if not isinstance(traffic, dict):
        raise ConfigError("must be a mapping", field=f"{where}.model_traffic", file=source)
    for key in traffic:
        if key not in TRAFFIC_KEYS:
            raise _unknown(key, TRAFFIC_KEYS, f"{where}.model_traffic", source)
    for key in ("extra_body", "extra_headers"):
        if not isinstance(settings[key], dict):
            raise ConfigError("must be a mapping", field=f"{where}.{key}", file=source)
    if not isinstance(settings["interceptors"], list):
        raise ConfigError("must be a list", field=f"{where}.interceptors", file=source)
    return settings


def _interceptor(entry: Any, i: int, where: str, source: str | None) -> dict[str, Any]:
    """One entry of ``proxy.interceptors`` with 0.4's meaning (``caching`` replays, keyed by session)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError("must be a name or {name, config}", field=f"{where}.interceptors[{i}]", file=source)
    for key in entry:
        if key not in ("name", "config"):
            note = " ('enabled' is NeMo Evaluator 0.2.8's; 0.4 lists only what runs)" if key == "enabled" else ""
            raise ConfigError(f"unknown key '{key}'{note}", field=f"{where}.interceptors[{i}].{key}", file=source)
    config = dict(entry.get("config") or {})
    if entry["name"] == "caching":
        config = {"reuse_cached_responses": True, "session_prefix": True, **config}
    return {"name": entry["name"], "config": config}


def _chain(settings: dict[str, Any], generation: dict[str, Any], service: str | None, where: str,
           source: str | None) -> list[dict[str, Any]]:
    """The chain 0.4 builds for these proxy settings, in evalproxy's order (outer first, ``endpoint`` last)."""
    chain = [_interceptor(e, i, where, source) for i, e in enumerate(settings["interceptors"])]
    if any(e["name"] == "endpoint" for e in chain):
        raise ConfigError("0.4 adds 'endpoint' itself; do not list it", field=f"{where}.interceptors", file=source)
    if settings["verbose"]:
        chain.insert(0, {"name": "logging", "config": {}})
    add = {**generation, **settings["extra_body"]}
    modify: dict[str, Any] = {}
    if add:
        modify["params_to_add"] = add
    if settings["extra_headers"]:
        modify["headers_to_add"] = {str(k): str(v) for k, v in settings["extra_headers"].items()}
    if modify:  # before caching, so that the cache key covers what is sent (0.4's key does not)
        at = next((i for i, e in enumerate(chain) if e["name"] == "caching"), len(chain))
        chain.insert(at, {"name": "payload_modifier", "config": modify})
    fixup = next((e for e in chain if e["name"] == "finish_reason"), None)
    if settings["finish_reason_fixup"]:
        if fixup is not None:
            chain.remove(fixup)
        chain.append(fixup or {"name": "finish_reason", "config": {}})
    traffic = {**settings["model_traffic"], "service": service}
    chain += [{"name": "completions_guard", "config": {}}, {"name": "model_traffic", "config": traffic},
              {"name": "endpoint", "config": {}}]
    return chain


def _output(output: Any, out: Parts, source: str | None) -> None:
    """``output.dir`` and ``output.report``; the rest of ``output`` is 0.4's runner's."""
    if output is None:
        output = {}
    if not isinstance(output, dict):
        raise ConfigError("must be a mapping", field="output", file=source)
    for key in output:
        if key not in OUTPUT_KEYS:
            raise _unknown(key, OUTPUT_KEYS, "output", source)
    if isinstance(output.get("dir"), str):
        out.server["output_dir"] = output["dir"]
    report = output.get("report", ["markdown"])
    if isinstance(report, str):
        report = [report]
    if not isinstance(report, list) or any(r not in REPORT_FORMATS for r in report):
        raise ConfigError(f"report formats are {', '.join(REPORT_FORMATS)}", field="output.report", file=source)
    out.adapter["post_eval_hooks"] = [{"name": "post_eval_report", "config": {"report_types": list(report)}}]
    out.unused += [f"output.{k}" for k in sorted(output) if k not in ("dir", "report")]


SNAPSHOT_FILE = "full_config.yaml"
"""0.4's name for the config snapshot in the run dir."""


def snapshot_text(snapshot: dict[str, Any], source: str | None) -> str:
    """The file as written, with a header saying where it came from; ``${ENV}`` references stay unexpanded and
    secret-named values (a literal ``Authorization`` in ``extra_headers``) are redacted."""
    import yaml  # only when a 0.4 run starts

    from evalproxy.adapter.core.redact import redact_obj

    header = (f"# The NeMo Evaluator 0.4-shaped config this run was served from ({source or 'no file'}), as written;\n"
              "# the effective chain and settings are in adapter_config.yaml.\n")
    def kept(obj: Any) -> Any:  # env references as written (no secret in them); every other value redacted
        if isinstance(obj, dict):
            return {k: v if isinstance(v, str) and _ENV_REF.match(v) else
                    kept(v) if isinstance(v, dict | list) else redact_obj({k: v})[k] for k, v in obj.items()}
        if isinstance(obj, list):
            return [kept(v) if isinstance(v, dict | list) else redact_obj([v])[0] for v in obj]
        return obj

    return header + yaml.safe_dump(kept(snapshot), sort_keys=False)
