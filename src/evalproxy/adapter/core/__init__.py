"""Layer 0, the bottom: the error tree, the ``Params`` base, redaction, atomic files and exact summaries.

Nothing here imports any other part of evalproxy.
"""
