"""Immutable JSON: a request body that cannot be changed in place.

The cache key is computed from the parsed body and the bytes sent upstream are the client's own unless the body was
replaced, so a body changed in place would be keyed as one request and sent as another. :func:`freeze` makes that
impossible: the parsed body is a :class:`FrozenDict` of :class:`FrozenList` s, which read like ``dict`` and ``list``
(``isinstance`` holds, orjson serialises them) and refuse every change. To change a request, build a new body
(``{**ctx.json, "temperature": 0}``) and pass it to :meth:`RequestContext.set_json`. ``copy.deepcopy`` gives plain,
mutable containers.
"""

from __future__ import annotations

from typing import Any, NoReturn

_MESSAGE = "a request body is immutable: build a new one and pass it to ctx.set_json()"


def _refuse(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(_MESSAGE)


class FrozenDict(dict[str, Any]):
    """A JSON object that refuses changes."""

    __slots__ = ()
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (thaw(self),))


class FrozenList(list[Any]):
    """A JSON array that refuses changes."""

    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (thaw(self),))


_CONTAINERS = (dict, list)  # a tuple: isinstance with the union ``dict | list`` is twice as slow
MAX_DEPTH = 500
"""Nesting past this is refused (well inside Python's recursion limit); the server passes a lower bound."""


class NestingError(ValueError):
    """A JSON value nested deeper than :func:`freeze` was allowed to go."""


def freeze(value: Any, depth: int = MAX_DEPTH) -> Any:
    """``value`` with every dict and list replaced by its frozen twin (scalars are already immutable); containers
    nested more than ``depth`` deep raise :class:`NestingError`."""
    # Copied whole in C, then only the containers inside replaced (most values of a request are scalars): no
    # intermediate dict or list per container, and no comprehension's function call.
    if isinstance(value, dict):
        if type(value) is FrozenDict:
            return value
        if depth <= 0:
            raise NestingError(depth)
        frozen_dict = FrozenDict(value)
        for k, v in value.items():
            if isinstance(v, _CONTAINERS):
                _set_item(frozen_dict, k, freeze(v, depth - 1))
        return frozen_dict
    if isinstance(value, list):
        if type(value) is FrozenList:
            return value
        if depth <= 0:
            raise NestingError(depth)
        frozen_list = FrozenList(value)
        for i, v in enumerate(value):
            if isinstance(v, _CONTAINERS):
                _set_index(frozen_list, i, freeze(v, depth - 1))
        return frozen_list
    return value


# The frozen twins refuse changes: while one is being built, the base types' own methods fill it.
_set_item = dict.__setitem__
_set_index = list.__setitem__


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a (frozen) JSON value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value
