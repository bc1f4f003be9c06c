"""``evalproxy report``, ``export``, ``compare`` and ``stats merge``: commands on run directories."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from evalproxy.cli.common import EXIT_CONFIG, logged
from evalproxy.records import compare_runs, export_runs
from evalproxy.records.compare_data import CachedAnswers
from evalproxy.records.stats_merge import merge_run_statistics
from evalproxy.storage import StoreError


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="re-render report.html and report.json from a run directory")
    p.add_argument("dir")
    p.set_defaults(func=logged(cmd_report))


def add_parsers(sub: Any) -> None:
    """``export``, ``compare`` and ``stats`` (``report`` is added by :func:`add_report_parser`, before ``cache``)."""
    p = sub.add_parser("export", help="gather runs into processed_results.json (or .csv, or MLflow)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output-dir", "-o", default=".", help="where processed_results goes (default: here)")
    p.add_argument("--dest", choices=["file", "mlflow"], default="file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///..., file:...)")
    p.add_argument("--experiment", default="evalproxy", help="MLflow experiment name")
    p.set_defaults(func=logged(cmd_export))

    p = sub.add_parser("compare", help="are two runs comparable, what changed in scores and answers")
    p.add_argument("baseline")
    p.add_argument("candidate")
    p.add_argument("--html", help="write the comparison as an HTML page")
    p.add_argument("--json", help="write the comparison as JSON")
    p.add_argument("--fail-on", choices=["none", "regression"], default="none",
                   help="regression: exit 1 on a significant drop in a score")
    p.add_argument("--max-changed", type=int, default=10, help="changed answers shown")
    p.set_defaults(func=logged(cmd_compare))

    p = sub.add_parser("stats", help="merge the statistics of proxies that served one run (other machines, workers)")
    p.add_argument("action", choices=["merge"])
    p.add_argument("dirs", nargs="+", help="the proxies' output dirs")
    p.add_argument("--output", "-o", help="where eval_factory_metrics.json goes (default: the current dir)")
    p.add_argument("--config", "-c", help="the run's config (default: the first dir's adapter_config.yaml)")
    p.set_defaults(func=logged(cmd_stats))


def cmd_report(args: argparse.Namespace) -> int:
    from evalproxy.hooks.post_eval_report import render_reports  # the report templates, only for this command

    paths = asyncio.run(render_reports(Path(args.dir)))
    for p in paths:
        print(p)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    for d in (args.baseline, args.candidate):
        if not Path(d).is_dir():
            print(f"evalproxy compare: no run directory at {d}", file=sys.stderr)
            return EXIT_CONFIG
    answers = CachedAnswers()
    try:
        for d in (args.baseline, args.candidate):
            answers.run(d)
        c = compare_runs(args.baseline, args.candidate, answers=answers, request_bodies=answers.bodies,
                         max_changed=args.max_changed, fail_on=args.fail_on)
    except StoreError as exc:
        print(f"evalproxy compare: {exc}", file=sys.stderr)
        return 1
    finally:
        answers.close()
    print(c.to_text())
    if args.html:
        Path(args.html).write_text(c.to_html(), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(c.to_dict(), indent=2, default=str), encoding="utf-8")
    return c.exit_code


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats merge``: one eval_factory_metrics.json for proxies that served one run, from their output dirs."""
    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.is_dir():
            print(f"evalproxy: no run directory at {d}", file=sys.stderr)
            return 1
    out = Path(args.output) if args.output else Path.cwd()
    print(merge_run_statistics(dirs, out, Path(args.config) if args.config else None))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        print(f"evalproxy export: no run directory at {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dest == "mlflow":
        if not args.tracking_uri:
            print("evalproxy export --dest mlflow needs --tracking-uri", file=sys.stderr)
            return EXIT_CONFIG
        try:
            from evalproxy.records.mlflow_export import export_to_mlflow

            ids = export_to_mlflow(args.run_dirs, tracking_uri=args.tracking_uri, experiment_name=args.experiment)
        except ImportError as exc:
            print(f"evalproxy: MLflow export needs the extra evalproxy[mlflow] ({exc})", file=sys.stderr)
            return 1
        except Exception as exc:  # MLflow's own errors (an unsupported store URI, a server that refuses)
            print(f"evalproxy: MLflow export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        for run_id in ids:
            print(run_id)
        return 0
    print(export_runs(args.run_dirs, args.output_dir, fmt=args.format))
    return 0
