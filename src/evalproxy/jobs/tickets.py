"""Per-job tickets: how a job on a cluster gets its secrets without them ever reaching the cluster's disk.

``sbatch`` hands the job's environment to slurmctld, which keeps it in its ``StateSaveLocation`` until it purges the
job. So a job submitted to Slurm goes with a few plain variables only (``PATH``, ``HOME``, ``PYTHONPATH``, the
locale...: what starts Python), a random ticket (:data:`TICKET_ENV`) and the service's URL (:data:`SERVICE_URL_ENV`).
On the node, before ``evalproxy run`` starts, :mod:`evalproxy.jobs.wrap` posts the ticket to
``POST /v1/evaluation/jobs/{id}/secrets`` (:func:`fetch_secrets`) and puts the answer into its child's environment
only: ``{"env": {NAME: value}, "rest": {NAME: value}}``, the job's secrets (the upstream key, the store URL in
:data:`CACHE_URL_ENV`, every credential of the service's environment) and the rest of the environment it would
have had. Nothing of the service's environment but those few variables reaches the cluster's disk, so a secret
held under a name nobody would take for one stays off it too.

The service keeps the ticket's SHA-256 (:func:`ticket_hash`) in ``jobs.db``, never the ticket, and accepts it only
for its own job while that job is pending or running: a requeued job fetches again, an ended one is refused.
The ticket itself is worth little: a key for one job's secrets, only while the job lives.

Standard library only: the job's wrapper imports this module before anything else runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request

TICKET_ENV = "EVALPROXY_JOBS_TICKET"
"""The job's ticket, in its environment (what Slurm stores: worth nothing once the job ended)."""
SERVICE_URL_ENV = "EVALPROXY_JOBS_URL"
"""The jobs service's URL as the nodes reach it (``jobs serve --public-url``, else its bound address)."""
CACHE_URL_ENV = "EVALPROXY_JOBS_CACHE_URL"
"""The store URL (it may carry a password) reaches the job's child in this variable, fetched with the ticket."""
FETCH_WAIT = 60.0
"""Seconds a job keeps trying to reach a service that does not answer (one restarting) before it fails."""
FETCH_TIMEOUT = 10.0


class FetchError(Exception):
    """The job could not get its secrets: the service is unreachable or refused the ticket. The message says which,
    for the job's log and its status."""


MAX_REPLY_BYTES = 1 << 20
"""The most of the service's answer a job reads (an environment is some kilobytes: a larger answer is no JSON)."""


def new_ticket() -> str:
    return secrets.token_urlsafe(32)


def ticket_hash(ticket: str) -> str:
    """What the service keeps of a ticket: its SHA-256, hex (a ticket is 256 random bits: no salt is needed)."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def ticket_matches(ticket: str, stored: str | None) -> bool:
    """Whether ``ticket`` is the one whose hash is ``stored``, compared in constant time."""
    return stored is not None and hmac.compare_digest(ticket_hash(ticket).encode(), stored.encode())


def secrets_url(service_url: str, job_id: str) -> str:
    return f"{service_url.rstrip('/')}/v1/evaluation/jobs/{job_id}/secrets"


def fetch_secrets(service_url: str, job_id: str, ticket: str,
                  wait: float = FETCH_WAIT) -> tuple[dict[str, str], dict[str, str]]:
    """(The job's secrets ``{NAME: value}``, the rest of its environment) from the service. A service that does not
    answer is asked again for ``wait`` seconds; a refusal is final. Raises :class:`FetchError` saying why."""
    url = secrets_url(service_url, job_id)
    deadline = time.monotonic() + wait
    pause = 0.5
    while True:
        request = urllib.request.Request(url, data=b"{}", method="POST", headers={
            "Authorization": f"Bearer {ticket}", "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as resp:
                return _env_of(resp.read(MAX_REPLY_BYTES), url)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or time.monotonic() >= deadline:
                what = "refused the job's ticket" if exc.code in (401, 403) else "could not give the job's secrets"
                raise FetchError(f"the jobs service at {service_url} {what} ({exc.code}: {_detail(exc)})") from None
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                reason = getattr(exc, "reason", exc)
                raise FetchError(f"the jobs service at {service_url} is unreachable ({reason}; tried for "
                                 f"{wait:g} s): the nodes must reach it, see jobs serve --public-url") from None
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 5.0)


def _env_of(raw: bytes, url: str) -> tuple[dict[str, str], dict[str, str]]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise FetchError(f"{url} answered something that is not JSON") from None
    parts = []
    for name in ("env", "rest"):
        part = data.get(name) if isinstance(data, dict) else None
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in part.items()):
            raise FetchError(f"{url} answered without an {name!r} object of strings")
        parts.append(part)
    return parts[0], parts[1]


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read(MAX_REPLY_BYTES))
    except (ValueError, OSError):
        return str(exc.reason)
    detail = data.get("detail") if isinstance(data, dict) else None
    return str(detail) if detail else str(exc.reason)
