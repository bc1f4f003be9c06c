"""The command line: ``evalproxy serve | run | report | cache | export | compare | demo | jobs``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evalproxy import __version__
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.net import is_loopback
from evalproxy.cli import cache, records, serve
from evalproxy.cli.common import EXIT_CONFIG, raise_open_files_limit, setup_logging
from evalproxy.cli.common import warn_bind as _warn_bind
from evalproxy.jobs.cli import add_jobs_parser, run_jobs_command
from evalproxy.records.compare_data import CachedAnswers as _CachedAnswers

# What tests and scripts have long imported from ``evalproxy.cli``; the code lives where the names say.
__all__ = ["EXIT_CONFIG", "_CachedAnswers", "_warn_bind", "build_parser", "is_loopback", "main",
           "raise_open_files_limit", "setup_logging"]


def build_parser() -> argparse.ArgumentParser:
    """The ``evalproxy`` parser; each sub-command's parser carries its command as ``func``."""
    parser = argparse.ArgumentParser(prog="evalproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evalproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parsers(sub)
    records.add_report_parser(sub)
    cache.add_parsers(sub)
    records.add_parsers(sub)
    serve.add_demo_parser(sub)
    add_jobs_parser(sub).set_defaults(func=run_jobs_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"evalproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return 1
    return status
