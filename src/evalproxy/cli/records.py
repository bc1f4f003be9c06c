"""``evalproxy report``, ``export``, ``compare`` and ``stats merge``: commands on run directories."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from evalproxy.adapter.core.errors import ConfigError, UsageError
from evalproxy.cli.common import EXIT_CONFIG, logged
from evalproxy.records import compare_runs
from evalproxy.records.compare import EXIT_USAGE
from evalproxy.records.compare_data import CachedAnswers
from evalproxy.records.stats_merge import merge_run_statistics
from evalproxy.storage import StoreError


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="re-render report.html and report.json from a run directory")
    p.add_argument("dir")
    p.set_defaults(func=logged(cmd_report))


def add_parsers(sub: Any) -> None:
    """``export``, ``compare`` and ``stats`` (``report`` is added by :func:`add_report_parser`, before ``cache``)."""
    add_export_parser(sub)

    p = sub.add_parser("compare", help="one verdict on two runs: regression, improvement, no significant change or "
                       "not comparable (exit 1, 1, 0, 2; 3 on a usage or I/O error)")
    p.add_argument("baseline")
    p.add_argument("candidate")
    p.add_argument("--html", help="write the comparison as an HTML page (its folder is created)")
    p.add_argument("--json", help="write the comparison as JSON (its folder is created)")
    p.add_argument("--fail-on", choices=["none", "regression"], default="none",
                   help="regression: exit 1 on a drop beyond noise")
    p.add_argument("--vary", nargs="+", default=[], metavar="FIELD",
                   help="the difference under test (system_message, temperature, model, ...): shown, not counted "
                        "against comparability")
    p.add_argument("--max-drop", type=float, metavar="X",
                   help="exit 1 when a task score drops by more than X beyond noise (0-1 scale, as nel compare)")
    p.add_argument("--strict", action="store_true",
                   help="with --max-drop: a drop larger than X breaches even when it is within noise")
    p.add_argument("--show-flips", action="store_true",
                   help="list the samples that flipped (right -> wrong first) with question, target and answers")
    p.add_argument("--max-changed", type=int, default=10, help="changed answers listed in the text")
    p.set_defaults(func=logged(cmd_compare))

    add_gate_parser(sub)

    p = sub.add_parser("stats", help="merge the statistics of proxies that served one run (other machines, workers)")
    p.add_argument("action", choices=["merge"])
    p.add_argument("dirs", nargs="+", help="the proxies' output dirs")
    p.add_argument("--output", "-o", help="where eval_factory_metrics.json goes (default: the current dir)")
    p.add_argument("--config", "-c", help="the run's config (default: the first dir's adapter_config.yaml)")
    p.set_defaults(func=logged(cmd_stats))


def add_gate_parser(sub: Any) -> None:
    p = sub.add_parser("gate", help="release gate over many tasks with a policy file (nel gate's format): GO, NO-GO "
                       "or INCONCLUSIVE (exit 0, 1, 2; 3 on a usage or I/O error)")
    p.add_argument("baseline", help="a run directory, or a directory of run directories")
    p.add_argument("candidate", help="a run directory, or a directory of run directories")
    p.add_argument("--policy", "-p", required=True, help="the gate policy YAML (tiers, max_drop per task)")
    p.add_argument("--output", "-o", help="write the gate report as JSON (its folder is created)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what is printed")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="exit 1 on NO-GO and 2 on INCONCLUSIVE (default); --no-strict exits 0")
    p.set_defaults(func=logged(cmd_gate))


def cmd_gate(args: argparse.Namespace) -> int:
    """``gate``: 0 GO, 1 NO-GO, 2 INCONCLUSIVE (``--no-strict``: 0), 3 a usage or I/O error."""
    from evalproxy.records.gate import EXIT, gate_runs, load_policy, render_gate_text

    try:
        report = gate_runs(args.baseline, args.candidate, load_policy(args.policy), policy_file=args.policy)
    except (UsageError, ConfigError, StoreError) as exc:
        print(f"evalproxy gate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    doc = json.dumps(report.to_dict(), indent=2, default=str)
    try:
        if args.output:
            write_text(Path(args.output), doc)
    except OSError as exc:
        print(f"evalproxy gate: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(doc if args.format == "json" else render_gate_text(report), end="\n" if args.format == "json" else "")
    return EXIT[report.verdict] if args.strict else 0


def cmd_report(args: argparse.Namespace) -> int:
    from evalproxy.hooks.post_eval_report import render_reports  # the report templates, only for this command

    paths = asyncio.run(render_reports(Path(args.dir)))
    for p in paths:
        print(p)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: the verdict's exit status (0, 1, 2), or 3 on a usage or I/O error."""
    for d in (args.baseline, args.candidate):
        if not Path(d).is_dir():
            print(f"evalproxy compare: no run directory at {d}", file=sys.stderr)
            return EXIT_USAGE
    if args.max_drop is not None and not 0 <= args.max_drop <= 1:
        print(f"evalproxy compare: --max-drop {args.max_drop:g} is not between 0 and 1", file=sys.stderr)
        return EXIT_USAGE
    answers = CachedAnswers()
    try:
        for d in (args.baseline, args.candidate):
            answers.run(d)
        c = compare_runs(args.baseline, args.candidate, answers=answers, request_bodies=answers.bodies,
                         max_changed=args.max_changed, fail_on=args.fail_on, vary=args.vary,
                         max_drop=args.max_drop, strict=args.strict)
    except (StoreError, UsageError, ConfigError) as exc:
        print(f"evalproxy compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        answers.close()
    try:  # the files first: a page that cannot be written is said before the verdict, not after it
        if args.html:
            write_text(Path(args.html), c.to_html())
        if args.json:
            write_text(Path(args.json), json.dumps(c.to_dict(), indent=2, default=str))
    except OSError as exc:
        print(f"evalproxy compare: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(c.to_text(show_flips=args.show_flips), end="")
    return c.exit_code


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


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


def add_export_parser(sub: Any) -> None:
    """``export``: the launcher's destinations and words (``--dest local``, ``--output_dir``), its settings keys."""
    p = sub.add_parser("export", help="export runs: processed_results.json/.csv, MLflow, W&B, inspect-ai logs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--dest", choices=["local", "file", "mlflow", "wandb", "inspect"], default="local",
                   help="local (alias file): processed_results; mlflow; wandb; inspect: inspect-ai logs")
    p.add_argument("--format", help="local: json (default) or csv; inspect: eval (default) or json")
    p.add_argument("--output-dir", "--output_dir", "-o", dest="output_dir",
                   help="local: where processed_results goes (default: here); inspect: where the logs go "
                        "(default: each run's inspect_logs/)")
    p.add_argument("--config", dest="export_config", metavar="FILE",
                   help="settings from a file: a launcher file's export.<dest> (or export: at the top)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one setting of the destination (YAML value), e.g. --set emit_traces=true")
    p.add_argument("--tracking-uri", help="mlflow: tracking URI (default MLFLOW_TRACKING_URI, else a local store)")
    p.add_argument("--experiment", help="mlflow: experiment name (default evalproxy)")
    p.add_argument("--entity", help="wandb: entity (team)")
    p.add_argument("--project", help="wandb: project (default evalproxy)")
    p.add_argument("--log-mode", "--log_mode", dest="log_mode", choices=["per_task", "multi_task"],
                   help="wandb: one W&B run per task (default) or per run")
    p.set_defaults(func=logged(cmd_export))


_FLAG_KEYS = {"tracking_uri": "tracking_uri", "experiment": "experiment_name", "entity": "entity",
              "project": "project", "log_mode": "log_mode"}


def _export_settings(args: argparse.Namespace, dest: str) -> dict[str, Any]:
    """The destination's settings: from ``--config``, then ``--set``, then the flags (each over the one before)."""
    from evalproxy.adapter.core.loads import load_yaml, read_yaml

    settings: dict[str, Any] = {}
    if args.export_config:
        data = read_yaml(args.export_config)
        section = data.get("export", data) if isinstance(data, dict) else None
        section = section.get(dest, {}) if isinstance(section, dict) else None
        if not isinstance(section, dict):
            raise ConfigError("must be a mapping", field=f"export.{dest}", file=args.export_config)
        settings.update(section)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"'{item}' is not KEY=VALUE", field="--set")
        settings[key.strip()] = load_yaml(value, source="--set")
    settings.update({key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag)})
    if args.output_dir is not None:
        settings["output_dir"] = args.output_dir
    if args.format is not None:
        settings["format"] = args.format
    return settings


def cmd_export(args: argparse.Namespace) -> int:
    from evalproxy.records.auto_export import EXTRAS, export_to

    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        print(f"evalproxy export: no run directory at {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        written = export_to(args.dest, args.run_dirs, _export_settings(args, args.dest))
    except ConfigError as exc:
        print(f"evalproxy export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ImportError as exc:
        print(f"evalproxy: export to {args.dest} needs {EXTRAS[args.dest]}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the destination library's own errors (an unsupported store URI, a refusing server)
        print(f"evalproxy: export to {args.dest} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for item in written:
        print(item)
    return 0
