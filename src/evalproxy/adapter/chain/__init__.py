"""Layer 3: the chain and hook protocols, their base classes, and :func:`build_chain`.

Imports only the layers below (core, config, flow).
"""

from evalproxy.adapter.chain.hook import BaseHook
from evalproxy.adapter.chain.interceptor import BaseInterceptor, Interceptor, Next, Terminal, build_chain, check_order

__all__ = ["BaseHook", "BaseInterceptor", "Interceptor", "Next", "Terminal", "build_chain", "check_order"]
