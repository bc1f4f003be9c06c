"""The base of every interceptor's and hook's ``Params`` model, and how a config's unknown fields are judged.

NeMo Evaluator builds params with pydantic's defaults, so a field it does not know is silently ignored there. A
NeMo config must load here too, but a typo must not pass unnoticed. So :class:`Params` ignores extra fields, and
:func:`unknown_fields` (called once, by the registry, for every interceptor and hook) sorts what a config holds:

* a field of the model: used;
* a field some NeMo Evaluator version defines for that unit (``nemo_fields``), or one every NeMo unit takes
  (``enabled``, ``log_level``): accepted, logged once as having no effect here;
* anything else: reported with the closest known name; the caller warns, or refuses when the config is strict.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# Fields NeMo Evaluator accepts in any interceptor's or hook's config: ``enabled`` (an ignored extra there, written
# by its docs and tests inside ``config``) and ``log_level`` (its logging params' field, never read).
NEMO_COMMON_FIELDS = frozenset({"enabled", "log_level"})


class Params(BaseModel):
    """Base of every interceptor's and hook's ``Params``.

    Unknown fields are ignored by the model and judged by :func:`unknown_fields` (warned about, or refused under
    ``strict``). ``nemo_fields`` names fields NeMo Evaluator defines for the unit that evalproxy does not use.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    nemo_fields: ClassVar[frozenset[str]] = frozenset()

    log_level: str | None = None
    """Accepted as in NeMo Evaluator's configs, where every interceptor has it; evalproxy logs by logger name."""


@dataclass(frozen=True)
class UnknownField:
    """A config field the unit's Params does not define."""

    name: str
    nemo: bool
    """True: a field NeMo Evaluator defines (accepted, no effect here). False: unknown to both."""
    closest: str | None = None

    def describe(self, unit: str) -> str:
        if self.nemo:
            return f"{unit}: '{self.name}' is a NeMo Evaluator field evalproxy accepts and does not use"
        hint = f"; did you mean '{self.closest}'?" if self.closest else ""
        return f"{unit}: unknown field '{self.name}'{hint}"


def known_fields(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    names.update(f.alias for f in model.model_fields.values() if f.alias)
    return names


def unknown_fields(model: type[BaseModel], config: Mapping[str, Any] | Iterable[str]) -> list[UnknownField]:
    """The fields of ``config`` that ``model`` does not define, each marked NeMo-known or not (closest name given)."""
    known = known_fields(model)
    if model.model_config.get("extra") == "allow":
        return []
    nemo = NEMO_COMMON_FIELDS | getattr(model, "nemo_fields", frozenset())
    out = []
    for name in config:
        if name in known:
            continue
        if name in nemo:
            out.append(UnknownField(name, nemo=True))
            continue
        close = difflib.get_close_matches(name, sorted(known | nemo), n=1, cutoff=0.6)
        out.append(UnknownField(name, nemo=False, closest=close[0] if close else None))
    return out
