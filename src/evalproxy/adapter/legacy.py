"""Legacy flat adapter keys (``use_caching: true`` ...) converted to the interceptor list NeMo Evaluator builds.

Conversion keeps everything the user wrote that is not a legacy key: ``post_eval_hooks`` and ``discovery`` are never
dropped, and run-wide settings (``html_report_size``, ``generate_html_report``) keep their meaning.
"""

from __future__ import annotations

from typing import Any

from evalproxy.adapter.errors import ConfigError

# Every legacy key with NeMo Evaluator's default.
LEGACY_DEFAULTS: dict[str, Any] = {
    "use_caching": True,
    "save_responses": False,
    "save_requests": False,
    "max_saved_requests": None,
    "max_saved_responses": None,
    "reuse_cached_responses": True,
    "use_system_prompt": False,
    "custom_system_prompt": None,
    "use_reasoning": False,
    "start_reasoning_token": "<think>",
    "end_reasoning_token": "</think>",
    "include_if_reasoning_not_finished": True,
    "track_reasoning": True,
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
    "use_nvcf": False,
    "use_omni_info": False,
    "output_dir": None,
    "include_json": True,
}
LEGACY_KEYS = frozenset(LEGACY_DEFAULTS)

_BOOL_KEYS = {k for k, v in LEGACY_DEFAULTS.items() if isinstance(v, bool)}


def convert_legacy(
    legacy: dict[str, Any], rest: dict[str, Any], *, source: str | None = None, prefix: str = ""
) -> dict[str, Any]:
    """Return ``rest`` with an ``interceptors`` list built from the legacy keys, in NeMo Evaluator's order."""
    p = f"{prefix}." if prefix else ""
    for k, v in legacy.items():
        if k in _BOOL_KEYS and not isinstance(v, bool):
            raise ConfigError(f"must be true or false, not {v!r}", field=f"{p}{k}", file=source)
    c = {**LEGACY_DEFAULTS, **legacy}
    interceptors: list[dict[str, Any]] = []

    if c["use_system_prompt"]:
        if not c["custom_system_prompt"]:
            raise ConfigError(
                "use_system_prompt is true but custom_system_prompt is empty", field=f"{p}custom_system_prompt",
                file=source,
            )
        interceptors.append({"name": "system_message", "config": {"system_message": c["custom_system_prompt"]}})
    if c["params_to_add"] or c["params_to_remove"] or c["params_to_rename"]:
        interceptors.append(
            {
                "name": "payload_modifier",
                "config": {
                    k: c[k] for k in ("params_to_add", "params_to_remove", "params_to_rename") if c[k] is not None
                },
            }
        )
    if c["use_request_logging"]:
        cfg = {"max_requests": c["max_logged_requests"]} if c["max_logged_requests"] is not None else {}
        interceptors.append({"name": "request_logging", "config": cfg})
    if c["use_reasoning"]:
        interceptors.append(
            {
                "name": "reasoning",
                "config": {
                    "start_reasoning_token": c["start_reasoning_token"],
                    "end_reasoning_token": c["end_reasoning_token"],
                    "include_if_not_finished": c["include_if_reasoning_not_finished"],
                    "enable_reasoning_tracking": c["track_reasoning"],
                },
            }
        )
    if c["use_caching"]:
        cfg = {
            "reuse_cached_responses": c["reuse_cached_responses"],
            "save_requests": c["save_requests"],
            "save_responses": c["save_responses"] or c["use_caching"],
            "max_saved_requests": c["max_saved_requests"],
            "max_saved_responses": c["max_saved_responses"],
        }
        if rest.get("caching_dir"):
            cfg["cache_dir"] = rest["caching_dir"]
        interceptors.append({"name": "caching", "config": cfg})
    interceptors.append({"name": "endpoint"})
    if rest.get("tracking_requests_stats", True):
        interceptors.append({"name": "response_stats"})
    if c["use_response_logging"]:
        cfg = {"max_responses": c["max_logged_responses"]} if c["max_logged_responses"] is not None else {}
        interceptors.append({"name": "response_logging", "config": cfg})
    if c["use_progress_tracking"]:
        cfg = {"progress_tracking_interval": c["progress_tracking_interval"]}
        if c["progress_tracking_url"]:
            cfg["progress_tracking_url"] = c["progress_tracking_url"]
        interceptors.append({"name": "progress_tracking", "config": cfg})
    return {**rest, "interceptors": interceptors}
