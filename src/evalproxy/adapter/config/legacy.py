"""Legacy flat adapter keys (``use_caching: true`` ...) converted to the interceptor list NeMo Evaluator builds.

The order and the settings each interceptor gets follow NeMo Evaluator 0.2.8's own conversion, so a legacy config
means the same chain here as there; with no legacy key at all it is NeMo's default chain
(``caching, endpoint, response_stats`` and the ``post_eval_report`` hook). Conversion keeps everything the user wrote
that is not a legacy key: ``post_eval_hooks`` and ``discovery`` are never dropped (NeMo drops them: a defect we do
not copy), and run-wide settings keep their meaning.
"""

from __future__ import annotations

from typing import Any

from evalproxy.adapter.core.errors import ConfigError

# Legacy keys with NeMo Evaluator's defaults. (Run-wide keys such as html_report_size are AdapterConfig fields.)
LEGACY_DEFAULTS: dict[str, Any] = {
    "use_caching": True,
    "save_responses": False,
    "save_requests": False,
    "max_saved_requests": None,
    "max_saved_responses": None,
    "use_system_prompt": False,
    "custom_system_prompt": None,
    "use_reasoning": False,
    "process_reasoning_traces": False,  # newer NeMo Evaluator name for use_reasoning
    "start_reasoning_token": None,
    "end_reasoning_token": "</think>",
    "include_if_reasoning_not_finished": None,
    "track_reasoning": None,
    "use_request_logging": False,
    "max_logged_requests": None,
    "use_response_logging": False,
    "max_logged_responses": None,
    "use_progress_tracking": False,
    "progress_tracking_url": None,
    "progress_tracking_interval": 1,
    "params_to_add": None,
    "params_to_remove": None,
    "params_to_rename": None,
    "headers_to_add": None,
    "headers_to_remove": None,
    "headers_to_rename": None,
    "use_raise_client_errors": False,
    "use_nvcf": False,
    "use_omni_info": False,
    "use_megatron": False,
    "output_dir": None,
    "include_json": True,
    "logging_aggregated_stats_interval": 100,
}
LEGACY_KEYS = frozenset(LEGACY_DEFAULTS)

_BOOL_KEYS = {k for k, v in LEGACY_DEFAULTS.items() if isinstance(v, bool)}
# Features NeMo Evaluator has that evalproxy does not implement: refuse rather than silently drop them.
# (NeMo Evaluator's open-source package has neither nvcf nor omni_info: its own pipeline fails on them too.)
_UNSUPPORTED = {"use_nvcf": "nvcf", "use_omni_info": "omni_info", "use_megatron": "megatron"}


def convert_legacy(
    legacy: dict[str, Any], rest: dict[str, Any], *, source: str | None = None, prefix: str = ""
) -> dict[str, Any]:
    """Return ``rest`` with ``interceptors`` (and, if none are given, ``post_eval_hooks``) built from legacy keys."""
    p = f"{prefix}." if prefix else ""
    for k, v in legacy.items():
        if k in _BOOL_KEYS and not isinstance(v, bool):
            raise ConfigError(f"must be true or false, not {v!r}", field=f"{p}{k}", file=source)
        if k in _UNSUPPORTED and v:
            raise ConfigError(f"the '{_UNSUPPORTED[k]}' interceptor is not available in evalproxy",
                              field=f"{p}{k}", file=source)
    c = {**LEGACY_DEFAULTS, **legacy}
    caching_dir = rest.get("caching_dir")
    output_dir = c["output_dir"]
    html = rest.get("generate_html_report", True)
    html_size = rest.get("html_report_size", 5)
    stats_base = caching_dir or output_dir  # None: the interceptor's own default under the run's output_dir

    interceptors: list[dict[str, Any]] = []
    if c["use_system_prompt"] and c["custom_system_prompt"] is not None:
        interceptors.append({"name": "system_message", "config": {"system_message": c["custom_system_prompt"]}})
    modify = {k: c[k] for k in ("params_to_add", "params_to_remove", "params_to_rename",
                                 "headers_to_add", "headers_to_remove", "headers_to_rename") if c[k]}
    if modify:
        interceptors.append({"name": "payload_modifier", "config": modify})
    if c["use_request_logging"]:
        cfg: dict[str, Any] = {}
        if c["max_logged_requests"] is not None:
            cfg["max_requests"] = c["max_logged_requests"]
        interceptors.append({"name": "request_logging", "config": cfg})
    if c["use_caching"] or c["save_responses"] or c["save_requests"] or html:
        interceptors.append(_caching(c, caching_dir, output_dir, html, html_size))
    interceptors.append({"name": "endpoint"})
    if rest.get("tracking_requests_stats", True):
        cfg = {"logging_aggregated_stats_interval": c["logging_aggregated_stats_interval"]}
        if stats_base is not None:
            cfg["cache_dir"] = f"{stats_base}/response_stats_cache"
        interceptors.append({"name": "response_stats", "config": cfg})
    if c["use_response_logging"]:
        cfg = {}
        if c["max_logged_responses"] is not None:
            cfg["max_responses"] = c["max_logged_responses"]
        interceptors.append({"name": "response_logging", "config": cfg})
    if c["use_reasoning"] or c["process_reasoning_traces"]:
        interceptors.append(_reasoning(c, rest.get("tracking_requests_stats", True), stats_base))

    if c["use_progress_tracking"]:
        interceptors.append(_progress_tracking(c, output_dir))
    if c["use_raise_client_errors"]:
        interceptors.append({"name": "raise_client_errors", "config": {}})

    out = {**rest, "interceptors": interceptors}
    if html and not rest.get("post_eval_hooks"):
        report_types = ["html", "json"] if c["include_json"] else ["html"]
        out["post_eval_hooks"] = [{"name": "post_eval_report",
                                   "config": {"report_types": report_types, "html_report_size": html_size}}]
    return out


def _caching(c: dict[str, Any], caching_dir: str | None, output_dir: str | None, html: bool,
             html_size: int | None) -> dict[str, Any]:
    """The ``caching`` entry NeMo builds from legacy keys (and for the HTML report's saved pairs)."""
    save_requests, save_responses = c["save_requests"], c["save_responses"]
    max_req, max_resp = c["max_saved_requests"], c["max_saved_responses"]
    if html:
        # The report needs saved pairs: both are saved, and a cap is raised to html_report_size (never lowered),
        # as NeMo Evaluator converts it. With reuse_cached_responses the caching interceptor saves every answer
        # whatever max_saved_responses says, so a resumed run still replays everything.
        save_requests = save_responses = True
        if html_size is not None:
            max_req = max(html_size, max_req) if max_req is not None else html_size
            max_resp = max(html_size, max_resp) if max_resp is not None else html_size
    cfg = {"reuse_cached_responses": c["use_caching"], "save_requests": save_requests,
           "save_responses": save_responses}
    if caching_dir is not None:
        cfg["cache_dir"] = caching_dir
    elif output_dir is not None:
        cfg["cache_dir"] = f"{output_dir}/cache"
    if max_req is not None:
        cfg["max_saved_requests"] = max_req
    if max_resp is not None:
        cfg["max_saved_responses"] = max_resp
    return {"name": "caching", "config": cfg}


def _reasoning(c: dict[str, Any], tracking: bool, stats_base: str | None) -> dict[str, Any]:
    """The ``reasoning`` entry NeMo builds from legacy keys."""
    cfg = {"end_reasoning_token": c["end_reasoning_token"]}
    if c["start_reasoning_token"] is not None:
        cfg["start_reasoning_token"] = c["start_reasoning_token"]
    if c["include_if_reasoning_not_finished"] is not None:
        cfg["include_if_not_finished"] = c["include_if_reasoning_not_finished"]
    if c["track_reasoning"] is not None:
        cfg["enable_reasoning_tracking"] = c["track_reasoning"]
    if tracking:
        cfg["save_individuals"] = True
        if stats_base is not None:
            cfg["cache_dir"] = f"{stats_base}/reasoning_stats_cache"
    cfg["logging_aggregated_stats_interval"] = c["logging_aggregated_stats_interval"]
    return {"name": "reasoning", "config": cfg}


def _progress_tracking(c: dict[str, Any], output_dir: str | None) -> dict[str, Any]:
    """The ``progress_tracking`` entry, built only when asked for."""
    # NeMo Evaluator also switches this on when only output_dir is set (posting to localhost:8000); evalproxy
    # does it only when asked.
    cfg = {"progress_tracking_interval": c["progress_tracking_interval"], "request_method": "POST"}
    if c["progress_tracking_url"] is not None:
        cfg["progress_tracking_url"] = c["progress_tracking_url"]
    if output_dir is not None:
        cfg["output_dir"] = output_dir
    return {"name": "progress_tracking", "config": cfg}
