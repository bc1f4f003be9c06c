"""The jobs service's HTTP face: NeMo Evaluator's ``/v1/evaluation/{targets,configs,jobs}`` on aiohttp.

Targets and configs are created, listed, read and deleted by ``namespace/name``; a job names (or carries inline) one
of each and is stored with both resolved in full, so deleting a target later never changes a job's record. Listings
take ``page``, ``page_size``, ``sort`` (``-created_at`` by default) and filters as ``filter[field]=value`` or
``field=value``, and answer ``{object, data, pagination, sort, filter}``.

Every route is behind the site guard (:mod:`evalproxy.adapter.server.guard`), then the bearer token: a Host that is
not this service's gets 421, a request from another site's web page 403, a body that is not JSON 415, so no web page
the user opens can create a job (which runs a command) or read one. One route takes another credential instead of
the token: ``POST /v1/evaluation/jobs/{id}/secrets`` answers a job on a cluster its secrets for its own ticket
(:mod:`evalproxy.jobs.tickets`), and no other route accepts a ticket.

Errors are JSON ``{"detail", "field"}``: 400 for a malformed body or query (JSON nested deeper than
``MAX_JSON_DEPTH`` included), 401 without the token, 403/421/415 from the guard, 404 for an unknown path, 409 for a
taken ``namespace/name``, 422 for an invalid field of the body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from evalproxy.adapter.core.errors import (
    JobsBadRequestError,
    JobsConflictError,
    JobsError,
    JobsForbiddenError,
    JobsInvalidFieldError,
    JobsNotFoundError,
    JobsUnauthorizedError,
)
from evalproxy.adapter.server.guard import Handler, SitePolicy, install_guard
from evalproxy.jobs import launch
from evalproxy.jobs.files import Downloads
from evalproxy.jobs.models import (
    ConfigIn,
    JobIn,
    TargetIn,
    check_endpoint_url,
    check_placeholders,
    new_job_id,
    normalise_target,
    now,
    parse_model,
)
from evalproxy.jobs.runner import ACTIVE, FINAL, JobRunner, held_back, job_secrets, status_details
from evalproxy.jobs.settings import Settings
from evalproxy.jobs.tickets import ticket_matches
from evalproxy.storage.jobs_db import JobsDB, Kind

log = logging.getLogger("evalproxy.jobs")

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", JobsDB)
RUNNER = web.AppKey("runner", JobRunner)
DOWNLOADS = web.AppKey("downloads", Downloads)

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
JOB_FILTERS = {"status": "status", "namespace": "namespace", "target": "target_ref", "config": "config_ref"}
RESOURCE_FILTERS = {"namespace": "namespace", "name": "name"}
MAX_JSON_DEPTH = 64
"""Deepest nesting of a request body: deeper is a 400 (a record must stay within what orjson writes back)."""
SECRETS_ROUTE = "job-secrets"
"""The one route the service's token does not guard: its credential is the job's ticket."""
TICKET_STATUSES = ("pending", "running")
"""A job's ticket is accepted while the job is in one of these (a requeued job is pending again)."""



def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except JobsError as exc:
        return json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"detail": exc.reason, "field": None}, status=exc.status)


def refusal(status: int, code: str, message: str) -> web.Response:
    """The site guard's refusal in the service's own error shape."""
    return json_response({"detail": message, "field": None}, status=status)


def bearer_auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name == SECRETS_ROUTE:  # the job's ticket is checked there, not the token
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise JobsUnauthorizedError("a bearer token is required: Authorization: Bearer <token>")
        return await handler(request)

    return check


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JobsBadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobsBadRequestError("the body must be a JSON object")
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise JobsBadRequestError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether ``data`` has objects or arrays nested more than ``limit`` deep (without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _positive_int(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise JobsBadRequestError(f"{name}: must be a whole number, not {raw!r}", field=name) from None
    if value < 1 or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum else ""
        raise JobsBadRequestError(f"{name}: must be at least 1{upper}", field=name)
    return value


async def list_page(request: web.Request, table: str, columns: dict[str, str]) -> web.Response:
    page = _positive_int(request, "page", 1)
    page_size = _positive_int(request, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    sort = request.query.get("sort", "-created_at")
    shown: dict[str, str] = {}
    for key, value in request.query.items():
        name = key[len("filter["):-1] if key.startswith("filter[") and key.endswith("]") else key
        if name in ("page", "page_size", "sort"):
            continue
        if name not in columns:
            raise JobsBadRequestError(f"{key}: unknown filter (one of {', '.join(columns)})", field=key)
        shown[name] = value.lower() if name == "status" else value
    if "status" in shown and shown["status"] not in (*ACTIVE, *FINAL):
        raise JobsBadRequestError(f"status: no such status '{shown['status']}'", field="status")
    filters = {columns[k]: v for k, v in shown.items()}
    result = await asyncio.to_thread(request.app[DB].list, table, filters=filters, sort=sort, page=page,
                                     page_size=page_size)
    return json_response({
        "object": "list",
        "data": result.items,
        "pagination": {"page": page, "page_size": page_size, "current_page_size": len(result.items),
                       "total_pages": -(-result.total // page_size), "total_results": result.total},
        "sort": sort,
        "filter": shown,
    })


# targets and configs


def _ref(value: str, field: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise JobsInvalidFieldError(f"{field}: expected 'namespace/name', got {value!r}", field=field)
    return namespace, name


def _target_record(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    record = normalise_target(parse_model(TargetIn, data, prefix=prefix), prefix=prefix)
    p = f"{prefix}." if prefix else ""
    check_endpoint_url(record["api_endpoint"]["url"], field=f"{p}api_endpoint.url")
    adapter_config = record["api_endpoint"]["adapter_config"]
    if adapter_config is not None:
        launch.check_adapter_config(adapter_config, field=f"{p}api_endpoint.adapter_config")
    return record


def _config_record(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    record = parse_model(ConfigIn, data, prefix=prefix).model_dump()
    check_placeholders(record, prefix=prefix)
    if record["adapter_config"] is not None:
        p = f"{prefix}." if prefix else ""
        launch.check_adapter_config(record["adapter_config"], field=f"{p}adapter_config")
    return record


def resource_routes(kind: Kind, build: Callable[[dict[str, Any]], dict[str, Any]]) -> list[web.RouteDef]:
    base = f"/v1/evaluation/{kind}"
    singular = kind[:-1]

    async def create(request: web.Request) -> web.Response:
        # Checking an adapter config may import interceptor modules: off the event loop.
        record = await asyncio.to_thread(build, await read_json(request))
        if record["name"] is None:
            raise JobsInvalidFieldError("name: required", field="name")
        record["created_at"] = record["updated_at"] = now()
        await asyncio.to_thread(request.app[DB].add_resource, kind, record)
        return json_response(record)

    async def listing(request: web.Request) -> web.Response:
        return await list_page(request, kind, RESOURCE_FILTERS)

    async def get(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        record = await asyncio.to_thread(request.app[DB].get_resource, kind, ns, name)
        if record is None:
            raise JobsNotFoundError(f"no {singular} '{ns}/{name}'")
        return json_response(record)

    async def delete(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if not await asyncio.to_thread(request.app[DB].delete_resource, kind, ns, name):
            raise JobsNotFoundError(f"no {singular} '{ns}/{name}'")
        return json_response({"message": "Resource deleted successfully.", "id": f"{ns}/{name}",
                              "deleted_at": now()})

    return [web.post(base, create), web.get(base, listing), web.get(base + "/{namespace}/{name}", get),
            web.delete(base + "/{namespace}/{name}", delete)]


# jobs


async def _resolve(request: web.Request, kind: Kind, value: Any,
                   build: Callable[[dict[str, Any], str], dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """(record, 'namespace/name' or None when inline) of the job's target or config."""
    field = kind[:-1]
    if isinstance(value, str):
        ns, name = _ref(value, field)
        record = await asyncio.to_thread(request.app[DB].get_resource, kind, ns, name)
        if record is None:
            raise JobsInvalidFieldError(f"{field}: no {field} '{ns}/{name}'", field=field)
        return record, f"{ns}/{name}"
    return await asyncio.to_thread(build, value, field), None


async def create_job(request: web.Request) -> web.Response:
    body = parse_model(JobIn, await read_json(request))
    target, target_ref = await _resolve(request, "targets", body.target, _target_record)
    config, config_ref = await _resolve(request, "configs", body.config, _config_record)
    if target_ref is not None:  # a target stored before keys in URLs were refused
        check_endpoint_url(target["api_endpoint"]["url"], field="target")
    check_placeholders(config, prefix="config")
    merged = launch.merged_adapter_config(target, config)
    if merged:
        await asyncio.to_thread(launch.check_adapter_config, merged, field="config.adapter_config")
    stamp, job_id = now(), new_job_id()
    job: dict[str, Any] = {
        "created_at": stamp, "updated_at": stamp, "id": job_id, "namespace": body.namespace,
        "description": body.description, "target": target, "config": config, "result": None,
        "output_files_url": None, "status_details": status_details(None), "status": "created",
        "project": body.project, "custom_fields": body.custom_fields, "ownership": body.ownership,
    }
    db = request.app[DB]
    await asyncio.to_thread(db.add_job, job, target_ref=target_ref, config_ref=config_ref)
    request.app[RUNNER].submit(job_id)
    return json_response(job)


async def list_jobs(request: web.Request) -> web.Response:
    return await list_page(request, "jobs", JOB_FILTERS)


async def _job(request: web.Request) -> dict[str, Any]:
    job_id = request.match_info["job_id"]
    job = await asyncio.to_thread(request.app[DB].get_job, job_id)
    if job is None:
        raise JobsNotFoundError(f"no job '{job_id}'")
    return job


async def get_job(request: web.Request) -> web.Response:
    return json_response(await _job(request))


async def job_status(request: web.Request) -> web.Response:
    job = await _job(request)
    return json_response({**job["status_details"], "status": job["status"]})


async def job_results(request: web.Request) -> web.Response:
    job = await _job(request)
    results = await asyncio.to_thread(request.app[DB].get_results, job["id"])
    if results is None:
        raise JobsNotFoundError(f"job '{job['id']}' has no results (status {job['status']})")
    return json_response({
        "created_at": job["updated_at"], "updated_at": job["updated_at"], "id": job["result"],
        "job": job["id"], "namespace": job["namespace"], "description": job["description"],
        "files_url": job["output_files_url"], "tasks": results["tasks"], "groups": results["groups"],
        "custom_fields": {},
    })


async def job_download(request: web.Request) -> web.StreamResponse:
    """The job's directory as a ZIP, streamed (symbolic links and special files are left out)."""
    job = await _job(request)
    job_dir = request.app[SETTINGS].jobs_dir / job["id"]
    if not await asyncio.to_thread(job_dir.is_dir):
        raise JobsNotFoundError(f"job '{job['id']}' has no files yet (status {job['status']})")
    return await request.app[DOWNLOADS].zip_dir(request, job_dir, job["id"])


async def job_logs(request: web.Request) -> web.StreamResponse:
    """The job's log, streamed: whole, its last ``?tail=N`` lines, or one byte range (``Range: bytes=...``)."""
    job = await _job(request)
    path = request.app[SETTINGS].jobs_dir / job["id"] / launch.LOG_FILE
    return await request.app[DOWNLOADS].send_log(request, path)


async def cancel_job(request: web.Request) -> web.Response:
    job = await _job(request)
    if job["status"] in FINAL:
        raise JobsConflictError(f"job '{job['id']}' has already ended ({job['status']})", field="status")
    await request.app[RUNNER].cancel(job["id"])
    return json_response(await _job(request))


async def delete_job(request: web.Request) -> web.Response:
    """Delete a job, its record and its files; a queued or running job is cancelled first."""
    job = await _job(request)
    await request.app[RUNNER].cancel(job["id"])
    final = await _job(request)
    await asyncio.to_thread(request.app[DB].delete_job, job["id"])
    job_dir = request.app[SETTINGS].jobs_dir / job["id"]
    await asyncio.to_thread(shutil.rmtree, job_dir, ignore_errors=True)
    return json_response(final)


async def job_secrets_for_ticket(request: web.Request) -> web.Response:
    """A job's secrets ``{"env": {NAME: value}}``, for its ticket (``Authorization: Bearer <ticket>``), while it is
    pending or running: the job's wrapper asks on the node before ``evalproxy run`` starts. A missing ticket is a
    401; another job's, an unknown job's or an ended job's a 403; a 409 when the service has no key to give. Every
    use is logged, the ticket never."""
    job_id, peer = request.match_info["job_id"], request.remote or "?"
    scheme, _, ticket = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not ticket.strip():
        log.warning("job %s: secrets refused to %s: no ticket", job_id, peer)
        raise JobsUnauthorizedError("the job's ticket is required: Authorization: Bearer <ticket>")
    found = await asyncio.to_thread(request.app[DB].get_ticket, job_id)
    if found is None or not ticket_matches(ticket.strip(), found[1]):
        log.warning("job %s: secrets refused to %s: not this job's ticket", job_id, peer)
        raise JobsForbiddenError(f"this ticket is not job '{job_id}'s")
    status = found[0]
    if status not in TICKET_STATUSES:
        log.warning("job %s: secrets refused to %s: the job is %s", job_id, peer, status)
        raise JobsForbiddenError(f"job '{job_id}' is {status}: its ticket is no longer accepted", field="status")
    job = await asyncio.to_thread(request.app[DB].get_job, job_id)
    if job is None:  # deleted meanwhile
        raise JobsForbiddenError(f"this ticket is not job '{job_id}'s")
    env = job_secrets(request.app[SETTINGS], job)
    key_name = job["target"]["api_endpoint"].get("api_key_name")
    if key_name and key_name not in env:  # a service restarted without it: the job must not run keyless
        log.error("job %s: secrets asked for, but the service's environment has no %s", job_id, key_name)
        raise JobsConflictError(f"the service's environment has no {key_name} (the target's api_key_name): "
                                "restart it with the key set", field="api_key_name")
    rest = held_back(request.app[SETTINGS], job, env)
    log.info("job %s: secrets (%s) and %d other variables fetched with its ticket by %s", job_id,
             ", ".join(sorted(env)) or "none", len(rest), peer)
    return json_response({"env": env, "rest": rest})


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "healthy"})


async def _state(app: web.Application) -> AsyncIterator[None]:
    """The database, the runner and the download executor: opened here, closed here (running jobs are stopped
    first)."""
    settings = app[SETTINGS]
    await asyncio.to_thread(settings.jobs_dir.mkdir, parents=True, exist_ok=True)
    db = await asyncio.to_thread(JobsDB, settings.db_path)
    runner = JobRunner(db, settings)
    app[DB], app[RUNNER], app[DOWNLOADS] = db, runner, Downloads()
    await runner.recover()
    yield
    await app[DOWNLOADS].aclose()
    await runner.aclose()
    await asyncio.to_thread(db.close)


def create_app(settings: Settings) -> web.Application:
    middlewares: list[Any] = [errors_as_json]
    if settings.token:
        middlewares.append(bearer_auth(settings.token))
    app = web.Application(middlewares=middlewares)
    install_guard(app, SitePolicy(bind=settings.bind, allowed_hosts=settings.allowed_hosts,
                                  allowed_origins=settings.allowed_origins, cors_methods="GET, POST, DELETE"), refusal)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_state)
    app.add_routes([
        *resource_routes("targets", _target_record),
        *resource_routes("configs", _config_record),
        web.post("/v1/evaluation/jobs", create_job),
        web.get("/v1/evaluation/jobs", list_jobs),
        web.get("/v1/evaluation/jobs/{job_id}", get_job),
        web.delete("/v1/evaluation/jobs/{job_id}", delete_job),
        web.get("/v1/evaluation/jobs/{job_id}/status", job_status),
        web.get("/v1/evaluation/jobs/{job_id}/results", job_results),
        web.get("/v1/evaluation/jobs/{job_id}/download", job_download),
        web.get("/v1/evaluation/jobs/{job_id}/logs", job_logs),
        web.post("/v1/evaluation/jobs/{job_id}/cancel", cancel_job),
        web.post("/v1/evaluation/jobs/{job_id}/secrets", job_secrets_for_ticket, name=SECRETS_ROUTE),
        web.get("/health", health),
    ])
    return app
