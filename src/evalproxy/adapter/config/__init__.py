"""Layer 1: the config schema (NeMo Evaluator's ``adapter_config`` and the server's settings) and file reading.

Imports only :mod:`evalproxy.adapter.core`.
"""

from evalproxy.adapter.config.files import load_config, parse_config, read_config_file
from evalproxy.adapter.config.schema import (
    AdapterConfig,
    InterceptorConfig,
    LoadedConfig,
    PostEvalHookConfig,
    ServerConfig,
    validation_error,
)

__all__ = [
    "AdapterConfig",
    "InterceptorConfig",
    "LoadedConfig",
    "PostEvalHookConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "read_config_file",
    "validation_error",
]
