"""Addresses: which binds stay on this machine, and which cache locations name a server store."""

from __future__ import annotations

import ipaddress

STORE_URL_SCHEMES = ("redis://", "rediss://", "unix://")
"""A cache location starting with one of these is a server store (Redis, Valkey), not a directory."""


def is_store_url(location: object) -> bool:
    """Whether ``location`` names a server store rather than a cache directory."""
    return isinstance(location, str) and location.startswith(STORE_URL_SCHEMES)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
