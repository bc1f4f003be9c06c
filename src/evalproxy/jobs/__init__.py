"""The evaluation jobs service: targets, configs and jobs over REST (NeMo Evaluator's shapes), kept in SQLite.

Each job runs its harness command through its own proxy with ``evalproxy run`` (a subprocess: the same code as the
command), in a directory of its own; its results come from the run record or the harness's results file.
"""
