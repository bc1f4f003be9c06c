"""The REST surface: listings, pagination, bad input named by field, the bearer token, the serve command's guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.jobs.conftest import API_KEY_ENV, MakeService, client_command, wait_for_status


def target_body(upstream: TestServer | None = None, **over: Any) -> dict[str, Any]:
    url = str(upstream.make_url("/v1")) if upstream else "http://127.0.0.1:9/v1"
    return {"namespace": "team", "name": "fake-model",
            "api_endpoint": {"url": url, "model_id": "fake/adder", "api_key_name": API_KEY_ENV}, **over}


def config_body(**over: Any) -> dict[str, Any]:
    return {"namespace": "team", "name": "arith", "command": client_command(), "params": {"limit_samples": 2},
            **over}


class TestResources:
    async def test_targets_and_configs_create_list_get_delete(self, make_service: MakeService) -> None:
        """Targets and configs are kept by namespace/name, listed with totals, and deleted."""
        client = await make_service()
        for i in range(3):
            resp = await client.post("/v1/evaluation/targets", json=target_body(name=f"t{i}"))
            assert resp.status == 200
        resp = await client.post("/v1/evaluation/configs", json=config_body(adapter_config={"use_caching": True}))
        assert resp.status == 200
        config = await resp.json()
        assert config["params"]["limit_samples"] == 2 and config["created_at"]

        resp = await client.get("/v1/evaluation/targets", params={"page_size": "2", "sort": "name"})
        listing = await resp.json()
        assert [t["name"] for t in listing["data"]] == ["t0", "t1"]
        assert listing["pagination"] == {"page": 1, "page_size": 2, "current_page_size": 2, "total_pages": 2,
                                         "total_results": 3}
        resp = await client.get("/v1/evaluation/targets/team/t1")
        target = await resp.json()
        assert target["api_endpoint"]["api_key_name"] == API_KEY_ENV and target["api_endpoint"]["type"] == "chat"

        resp = await client.delete("/v1/evaluation/targets/team/t1")
        assert resp.status == 200
        assert (await client.get("/v1/evaluation/targets/team/t1")).status == 404
        assert (await client.delete("/v1/evaluation/targets/team/t1")).status == 404
        resp = await client.get("/v1/evaluation/configs/team/arith")
        assert (await resp.json())["adapter_config"] == {"use_caching": True}

    async def test_target_adapter_config_beside_api_endpoint_is_stored_inside_it(
        self, make_service: MakeService
    ) -> None:
        """A target's adapter_config given beside api_endpoint is stored where the launcher keeps it."""
        client = await make_service()
        resp = await client.post("/v1/evaluation/targets", json=target_body(adapter_config={"caching_dir": "/tmp/c"}))
        target = await resp.json()
        assert target["api_endpoint"]["adapter_config"] == {"caching_dir": "/tmp/c"}
        assert "adapter_config" not in target


BAD_INPUT = [
    # (path, body, status, field)
    ("/v1/evaluation/configs", config_body(command=None), 422, "command"),
    ("/v1/evaluation/configs", {k: v for k, v in config_body().items() if k != "command"}, 422, "command"),
    ("/v1/evaluation/configs", config_body(command=["run", "{nope}"]), 422, "command[1]"),
    ("/v1/evaluation/configs", config_body(command=["run", "{params.top_k}"]), 422, "command[1]"),
    ("/v1/evaluation/configs", config_body(command=["run", "{params.temperature}"]), 422, "command[1]"),
    ("/v1/evaluation/configs", config_body(command=["run", "{params.extra.shots}"]), 422, "command[1]"),
    ("/v1/evaluation/configs", config_body(params={"limit_samples": 0}), 422, "params.limit_samples"),
    ("/v1/evaluation/configs", config_body(adapter_config={"interceptors": [{"name": "no_such"}]}), 422,
     "adapter_config.interceptors[0].name"),
    ("/v1/evaluation/targets", target_body(name="bad name"), 422, "name"),
    ("/v1/evaluation/targets", target_body(api_endpoint={"url": "ftp://x", "model_id": "m"}), 422,
     "api_endpoint.url"),
    ("/v1/evaluation/targets", target_body(api_endpoint={"url": "http://x/v1", "model_id": "m", "api_key": "sk-1"}),
     422, "api_endpoint.api_key"),
    ("/v1/evaluation/targets", {**target_body(), "name": None}, 422, "name"),
    ("/v1/evaluation/jobs", {"target": "team/missing", "config": "team/arith"}, 422, "target"),
    ("/v1/evaluation/jobs", {"target": "team/fake-model", "config": "team/missing"}, 422, "config"),
    ("/v1/evaluation/jobs", {"target": "no-slash", "config": "team/arith"}, 422, "target"),
    ("/v1/evaluation/jobs", {"target": "team/fake-model", "config": {"params": {}}}, 422, "config.command"),
    ("/v1/evaluation/jobs", {"target": "team/fake-model", "config": {"command": ["{bad}"]}}, 422,
     "config.command[0]"),
    ("/v1/evaluation/jobs", {"config": "team/arith"}, 422, "target"),
]


class TestBadInput:
    @pytest.mark.parametrize(("path", "body", "status", "field"), BAD_INPUT,
                             ids=[f"{p.rsplit('/', 1)[1]}-{f}" for p, _, _, f in BAD_INPUT])
    async def test_bad_input_is_a_4xx_naming_the_field(
        self, make_service: MakeService, path: str, body: dict[str, Any], status: int, field: str
    ) -> None:
        """Each invalid body gets its own 4xx with a JSON error whose field names the culprit."""
        client = await make_service()
        assert (await client.post("/v1/evaluation/targets", json=target_body())).status == 200
        assert (await client.post("/v1/evaluation/configs", json=config_body())).status == 200
        resp = await client.post(path, json=body)
        assert resp.status == status, await resp.text()
        error = await resp.json()
        assert error["field"] == field
        assert field.split("[")[0].split(".")[-1] in error["detail"]

    async def test_taken_namespace_and_name_is_a_409(self, make_service: MakeService) -> None:
        """Creating a target or config under a namespace/name that exists is a conflict naming 'name'."""
        client = await make_service()
        for path, body in (("/v1/evaluation/targets", target_body()), ("/v1/evaluation/configs", config_body())):
            assert (await client.post(path, json=body)).status == 200
            resp = await client.post(path, json=body)
            assert resp.status == 409
            error = await resp.json()
            assert error["field"] == "name" and "team/" in error["detail"]

    @pytest.mark.parametrize(("query", "field"), [
        ("page=0", "page"), ("page_size=x", "page_size"), ("sort=-bogus", "sort"), ("colour=red", "colour"),
        ("filter[status]=sleeping", "status"),
    ])
    async def test_bad_listing_query_is_a_400_naming_the_parameter(
        self, make_service: MakeService, query: str, field: str
    ) -> None:
        """An unreadable page, size, sort or filter is refused, naming the parameter."""
        client = await make_service()
        resp = await client.get(f"/v1/evaluation/jobs?{query}")
        assert resp.status == 400
        assert (await resp.json())["field"] == field

    async def test_unknown_paths_and_bad_json_answer_json(self, make_service: MakeService) -> None:
        """A missing job, an unknown path and a body that is not JSON all answer with a JSON detail."""
        client = await make_service()
        for method, path, status in (("GET", "/v1/evaluation/jobs/eval-0000000000000000", 404),
                                     ("GET", "/v1/nothing", 404)):
            resp = await client.request(method, path)
            assert resp.status == status and "detail" in await resp.json()
        resp = await client.post("/v1/evaluation/jobs", data=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status == 400 and "JSON" in (await resp.json())["detail"]


class TestPagination:
    async def test_sixty_jobs_list_in_pages_with_right_totals_and_order(
        self, make_service: MakeService, fake_upstream: TestServer, api_key: str, tmp_path: Path
    ) -> None:
        """Sixty jobs page through in created order (newest first by default), filtered totals included."""
        client = await make_service(max_concurrent=1)
        assert (await client.post("/v1/evaluation/targets", json=target_body(fake_upstream))).status == 200
        held = config_body(command=client_command("--hold", str(tmp_path / "never")))
        assert (await client.post("/v1/evaluation/configs", json=held)).status == 200
        created = []
        for _ in range(60):
            resp = await client.post("/v1/evaluation/jobs",
                                     json={"namespace": "team", "target": "team/fake-model", "config": "team/arith"})
            created.append((await resp.json())["id"])
        await wait_for_status(client, created[0], "running")

        seen: list[str] = []
        for page in (1, 2, 3):
            resp = await client.get("/v1/evaluation/jobs", params={"page": str(page), "page_size": "25"})
            listing = await resp.json()
            assert listing["pagination"] == {"page": page, "page_size": 25, "current_page_size": (25, 25, 10)[page - 1],
                                             "total_pages": 3, "total_results": 60}
            seen += [j["id"] for j in listing["data"]]
        assert seen == created[::-1]
        resp = await client.get("/v1/evaluation/jobs", params={"page": "4", "page_size": "25"})
        assert (await resp.json())["data"] == []

        resp = await client.get("/v1/evaluation/jobs", params={"sort": "created_at", "page": "3", "page_size": "25"})
        assert [j["id"] for j in (await resp.json())["data"]] == created[50:]
        for query, total in (("filter[status]=pending", 59), ("status=RUNNING", 1), ("target=team/fake-model", 60),
                             ("config=team/other", 0), ("namespace=team", 60)):
            resp = await client.get(f"/v1/evaluation/jobs?{query}")
            assert (await resp.json())["pagination"]["total_results"] == total, query


class TestAuth:
    async def test_token_is_required_on_every_call_when_set(self, make_service: MakeService) -> None:
        """With a token set, calls without it or with a wrong one get 401; with it they are served."""
        client = await make_service(token="s3cret-token", send_token=False)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            resp = await client.get("/v1/evaluation/jobs", headers=headers)
            assert resp.status == 401
            assert "bearer" in (await resp.json())["detail"]
        resp = await client.get("/health", headers={})
        assert resp.status == 401
        resp = await client.get("/v1/evaluation/jobs", headers={"Authorization": "Bearer s3cret-token"})
        assert resp.status == 200
