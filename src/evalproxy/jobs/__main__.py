"""``python -m evalproxy.jobs serve ...``: the jobs service without the main ``evalproxy`` command."""

from __future__ import annotations

import argparse
import sys

from evalproxy.jobs.cli import add_jobs_parser, run_jobs_command


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m evalproxy")
    add_jobs_parser(parser.add_subparsers(dest="command", required=True))
    return run_jobs_command(parser.parse_args(["jobs", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
