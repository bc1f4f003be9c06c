"""Layer 4: discovery (built-ins, entry points, ``discovery`` modules and dirs) and resolving names to classes.

Imports only the layers below (core, config, flow, chain).
"""

from evalproxy.adapter.registry.registry import Registry, Resolved, register_for_adapter, resolve

__all__ = ["Registry", "Resolved", "register_for_adapter", "resolve"]
