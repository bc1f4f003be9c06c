"""The base of every interceptor's and hook's ``Params`` model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of every interceptor's and hook's ``Params``: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_level: str | None = None
    """Accepted as in NeMo Evaluator's configs, where every interceptor has it; evalproxy logs by logger name."""
