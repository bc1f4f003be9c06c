"""Starts NeMo Evaluator's adapter server (a benchmark peer) with caching on. Runs in the peer's own venv.

    bench/.venvs/nemo028/bin/python bench/nemo_server.py VERSION UPSTREAM PORT OUTPUT_DIR

VERSION 0.2.8 takes the upstream as the full chat completions URL; 0.3.0's async proxy takes the base URL without /v1.
"""

from __future__ import annotations

import sys


def main() -> None:
    version, upstream, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    from nemo_evaluator.adapters.adapter_config import AdapterConfig

    cfg = AdapterConfig(
        interceptors=[
            {"name": "caching", "config": {"cache_dir": f"{out}/cache", "reuse_cached_responses": True,
                                           "save_requests": False, "save_responses": True}},
            {"name": "endpoint"},
            {"name": "response_stats", "config": {"cache_dir": f"{out}/response_stats_cache"}},
        ],
        post_eval_hooks=[],
    )
    if version.startswith("0.2"):
        from nemo_evaluator.adapters.server import _run_adapter_server

        _run_adapter_server(api_url=f"{upstream}/v1/chat/completions", output_dir=out, adapter_config=cfg,
                            port=port, model_name="bench")
    else:
        from nemo_evaluator.adapters import server as srv

        runner = getattr(srv, "_run_adapter_server")
        runner(api_url=upstream, output_dir=out, adapter_config=cfg, port=port, model_name="bench")


if __name__ == "__main__":
    main()
