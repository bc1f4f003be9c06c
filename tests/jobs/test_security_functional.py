"""The jobs service serves its own user only (issue 18): same-site requests, a token always, no key in a record.

Each attack goes to a real service on 127.0.0.1 (in this process, or ``python -m evalproxy.jobs serve``).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.jobs.conftest import API_KEY_ENV, MakeService, Service, wait_for_status

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

TARGET = {"url": "http://127.0.0.1:9/v1", "model_id": "fake/adder", "api_key_name": API_KEY_ENV}


def marker_job(marker: Path) -> dict[str, Any]:
    """A job whose command, if it ever ran, would create ``marker``."""
    return {"target": {"api_endpoint": TARGET}, "config": {"command": ["sh", "-c", f"touch {marker}"]}}


class TestSameSite:
    @pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
    async def test_simple_cross_site_post_runs_nothing(
        self, make_service: MakeService, tmp_path: Path, ctype: str
    ) -> None:
        """A job posted as a browser form or text/plain body (no token: --no-token) gets 415 and its command never
        runs."""
        client = await make_service(token=None)
        marker = tmp_path / "pwned"
        resp = await client.post("/v1/evaluation/jobs", data=orjson.dumps(marker_job(marker)),
                                 headers={"Content-Type": ctype})
        assert resp.status == 415
        assert "JSON" in (await resp.json())["detail"]
        listing = await (await client.get("/v1/evaluation/jobs")).json()
        assert listing["data"] == []
        assert not marker.exists()

    async def test_json_job_with_the_token_still_runs(self, make_service: MakeService, tmp_path: Path,
                                                      api_key: str) -> None:
        """The same job sent as JSON with the token does run: the guard stops web pages, not the user."""
        client = await make_service()
        marker = tmp_path / "ran"
        resp = await client.post("/v1/evaluation/jobs", json=marker_job(marker))
        assert resp.status == 200, await resp.text()
        await wait_for_status(client, (await resp.json())["id"], "completed", "failed")
        assert marker.exists()

    @pytest.mark.parametrize("path", ["/v1/evaluation/jobs", "/health"])
    async def test_foreign_host_gets_421(self, make_service: MakeService, path: str) -> None:
        """A Host a rebound DNS name sends (evil.example) gets 421 even with the token, on every route."""
        client = await make_service()
        resp = await client.get(path, headers={"Host": "evil.example:3826"})
        assert resp.status == 421
        assert "evil.example" in (await resp.json())["detail"]

    @pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}])
    async def test_cross_site_page_gets_403(self, make_service: MakeService, tmp_path: Path,
                                            headers: dict[str, str]) -> None:
        """A request from another site's page (Origin, or Sec-Fetch-Site alone) gets 403 and creates no job."""
        client = await make_service()
        marker = tmp_path / "pwned"
        resp = await client.post("/v1/evaluation/jobs", json=marker_job(marker), headers=headers)
        assert resp.status == 403
        assert (await (await client.get("/v1/evaluation/jobs")).json())["data"] == []
        assert not marker.exists()

    async def test_deep_json_is_a_400(self, make_service: MakeService) -> None:
        """A body nested 300 deep is a 400 naming the limit, not a 500."""
        client = await make_service()
        deep = '{"a":' * 300 + '"x"' + "}" * 300  # orjson itself writes at most 254 levels
        body = orjson.dumps({"namespace": "team", "name": "t", "api_endpoint": TARGET, "custom_fields": 0})
        body = body.replace(b'"custom_fields":0', b'"custom_fields":' + deep.encode())
        resp = await client.post("/v1/evaluation/targets", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert "nested deeper" in (await resp.json())["detail"]


class TestToken:
    async def test_call_without_the_token_gets_401(self, make_service: MakeService) -> None:
        """Without the bearer token a listing and a job post get 401."""
        client = await make_service(send_token=False)
        assert (await client.get("/v1/evaluation/jobs")).status == 401
        resp = await client.post("/v1/evaluation/jobs", json=marker_job(Path("/nonexistent/x")))
        assert resp.status == 401

    async def test_generated_token_is_0600_printed_once_and_reused(
        self, services: list[Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no token set, serve generates one, keeps it 0600 in the data dir, prints it once and reuses it."""
        monkeypatch.delenv("EVALPROXY_JOBS_TOKEN", raising=False)
        data, log = tmp_path / "data", tmp_path / "service.log"
        first = await Service.start(data, log)
        services.append(first)
        token_file = data / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert first.token == token and len(token) >= 32
        assert first.banner.count(token) == 1
        async with aiohttp.ClientSession(base_url=first.url) as anonymous, anonymous.get("/v1/evaluation/jobs") as resp:
            assert resp.status == 401
        assert (await first.json("GET", "/v1/evaluation/jobs"))["data"] == []
        await first.close()
        assert token not in log.read_text()

        second = await Service.start(data, log)
        services.append(second)
        assert second.token == token
        assert (await second.json("GET", "/health")) == {"status": "healthy"}

    async def test_allowed_host_and_origin_flags(self, services: list[Service], tmp_path: Path) -> None:
        """--allowed-host names another Host the service answers; --allowed-origin lets that page call, with CORS."""
        service = await Service.start(tmp_path / "data", tmp_path / "service.log", "--allowed-host", "jobs.lan",
                                      "--allowed-origin", "https://dash.example")
        services.append(service)
        async with service.http.get("/health", headers={"Host": "jobs.lan"}) as resp:
            assert resp.status == 200
        async with service.http.get("/health", headers={"Host": "other.lan"}) as resp:
            assert resp.status == 421
        async with service.http.get("/health", headers={"Origin": "https://dash.example"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://dash.example"
        async with service.http.get("/health", headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403

    @pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
    async def test_no_token_is_loopback_only_and_says_what_it_gives_up(self, tmp_path: Path, host: str) -> None:
        """``--no-token`` beyond loopback exits with status 2; on loopback it serves and warns on stderr."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalproxy.jobs", "serve", "--no-token", "--host", host, "--port", "0",
            "--data-dir", str(tmp_path / "d"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        if host == "0.0.0.0":
            _, err = await proc.communicate()
            assert proc.returncode == 2
            assert b"--no-token" in err and b"0.0.0.0" in err
            return
        try:
            line = (await proc.stdout.readline()).decode()
            assert "listening on" in line
            warning = (await proc.stderr.readline()).decode()
            assert "--no-token" in warning and "run commands" in warning
            assert not (tmp_path / "d" / "token").exists()
        finally:
            proc.terminate()
            await proc.communicate()


URL_KEY = "AIzaSy-url-key-0123456789abcdef"


class TestKeysInUrls:
    @pytest.mark.parametrize("query", ["key", "api-key", "api_key", "token", "sig", "x-goog-api-key"])
    async def test_key_in_the_target_url_is_refused_and_stored_nowhere(
        self, make_service: MakeService, fake_upstream: TestServer, tmp_path: Path, query: str
    ) -> None:
        """A key in the target URL's query is a 422 naming the field and api_key_name; it is in no file or answer."""
        client = await make_service()
        url = f"{fake_upstream.make_url('/v1')}?{query}={URL_KEY}"
        answers: list[bytes] = []
        target = {"namespace": "team", "name": "t", "api_endpoint": {**TARGET, "url": url}}
        resp = await client.post("/v1/evaluation/targets", json=target)
        assert resp.status == 422
        error = await resp.json()
        assert error["field"] == "api_endpoint.url" and "api_key_name" in error["detail"]
        answers.append(await resp.read())
        job = {"target": {"api_endpoint": {**TARGET, "url": url}}, "config": {"command": ["true"]}}
        resp = await client.post("/v1/evaluation/jobs", json=job)
        assert resp.status == 422
        assert (await resp.json())["field"] == "target.api_endpoint.url"
        answers.append(await resp.read())
        for path in ("/v1/evaluation/jobs", "/v1/evaluation/targets"):
            answers.append(await (await client.get(path)).read())
        files = [p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert files  # jobs.db and its WAL are there
        assert not [b for b in answers + files if URL_KEY.encode() in b]

    async def test_credentials_before_the_host_are_refused(self, make_service: MakeService) -> None:
        """``https://user:secret@host`` is refused the same way."""
        client = await make_service()
        target = {"namespace": "team", "name": "t",
                  "api_endpoint": {**TARGET, "url": f"http://me:{URL_KEY}@127.0.0.1:9/v1"}}
        resp = await client.post("/v1/evaluation/targets", json=target)
        assert resp.status == 422
        assert URL_KEY not in await resp.text()


def test_token_file_is_not_group_readable_under_a_loose_umask(tmp_path: Path) -> None:
    """The token file is created 0600 whatever the umask (os.open with the mode, not chmod afterwards)."""
    from evalproxy.jobs.cli import _token

    old = os.umask(0)
    try:
        token, note = _token("EVALPROXY_JOBS_TEST_NO_SUCH_VAR", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert note.count(token) == 1
