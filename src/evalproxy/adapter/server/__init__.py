"""Layer 5, the top: the server side. The aiohttp app and the :class:`Proxy` that owns a run, the upstream transport,
Prometheus collectors, the status line, files in the output dir, and :class:`RunningProxy`, which ``cli``, ``demo``
and the services start.

Imports any layer below.
"""
