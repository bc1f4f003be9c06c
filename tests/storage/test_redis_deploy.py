"""deploy/compose.yaml and deploy/k8s.yaml: valid YAML, Redis plus two proxy replicas behind one port, and proxy
arguments that ``evalproxy serve`` accepts (docker and kubectl are not available to the tests)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from evalproxy.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENTRYPOINT = ["serve", "--host", "0.0.0.0", "--port", "3825", "--output-dir", "/data"]  # the Dockerfile's


def defaults(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_runs_redis_and_two_replicas_behind_one_port() -> None:
    """Redis, a proxy service with two replicas on that Redis under one run id, and one published port in front."""
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert services["redis"]["image"].startswith("redis:")
    proxy = services["proxy"]
    assert proxy["deploy"]["replicas"] == 2 and "ports" not in proxy
    args = build_parser().parse_args([*ENTRYPOINT, *(defaults(a) for a in proxy["command"])])
    assert args.cache_url.startswith("redis://redis:6379/") and args.run_id
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published == ["3825:3825"]
    assert "server proxy:3825" in doc["configs"]["nginx"]["content"]


def test_k8s_has_a_deployment_a_service_and_a_redis() -> None:
    """The proxy Deployment (two replicas, arguments evalproxy accepts) is selected by its Service, and its
    --cache-url names the Redis Service."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s.yaml").read_text()) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = by[("Deployment", "evalproxy")]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args([*ENTRYPOINT, *container["args"]])
    redis_service = by[("Service", "evalproxy-redis")]
    assert args.cache_url.startswith(f"redis://{redis_service['metadata']['name']}:6379/")
    service = by[("Service", "evalproxy")]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert by[("Deployment", "evalproxy-redis")]["spec"]["template"]["metadata"]["labels"] == \
        redis_service["spec"]["selector"]
