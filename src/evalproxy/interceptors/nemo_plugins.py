"""Lets plugins written for NeMo Evaluator's API load through ``discovery`` without NeMo installed.

Importing this built-in module (the registry scans every built-in) installs :mod:`evalproxy.nemo_compat`'s import
hook for the ``nemo_evaluator`` names; it registers nothing itself and does nothing when NeMo is installed.
"""

from evalproxy.nemo_compat import install

install()
