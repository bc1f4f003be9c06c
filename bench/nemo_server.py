"""Starts NeMo Evaluator's adapter server (a benchmark peer) with caching on. Runs in the peer's own venv.

    bench/.venvs/nemo028/bin/python bench/nemo_server.py VERSION UPSTREAM PORT OUTPUT_DIR

0.2.8 (Flask + waitress) takes the upstream as the full chat completions URL; 0.3.0's async proxy (uvicorn) takes the
base URL without /v1.
"""

from __future__ import annotations

import sys


def run_028(upstream: str, port: int, out: str) -> None:
    from nemo_evaluator.adapters.adapter_config import AdapterConfig
    from nemo_evaluator.adapters.server import _run_adapter_server

    cfg = AdapterConfig(
        interceptors=[
            {"name": "caching", "config": {"cache_dir": f"{out}/cache", "reuse_cached_responses": True,
                                           "save_requests": False, "save_responses": True}},
            {"name": "endpoint"},
            {"name": "response_stats", "config": {"cache_dir": f"{out}/response_stats_cache"}},
        ],
        post_eval_hooks=[],
    )
    _run_adapter_server(api_url=f"{upstream}/v1/chat/completions", output_dir=out, adapter_config=cfg, port=port,
                        model_name="bench")


def run_030(upstream: str, port: int, out: str) -> None:
    import threading

    from nemo_evaluator.adapters.proxy import start_adapter_proxy

    start_adapter_proxy(upstream_url=upstream, model_id="bench", port=port, max_concurrent_upstream=512,
                        interceptor_specs=[{"name": "caching", "config": {"cache_dir": f"{out}/cache"}},
                                           {"name": "response_stats"}])
    threading.Event().wait()  # the proxy serves from its own thread; SIGTERM ends the process


def main() -> None:
    version, upstream, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    (run_028 if version.startswith("0.2") else run_030)(upstream, port, out)


if __name__ == "__main__":
    main()
