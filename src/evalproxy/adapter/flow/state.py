"""Typed per-request state, in the manner of aiohttp's ``AppKey``: data shared between interceptors travels under
typed keys, never in a bag of strings."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast, overload

T = TypeVar("T")


class StateKey(Generic[T]):
    """A typed key into :class:`State`; declare it beside the code that sets it: ``HIT = StateKey[bool]("hit")``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<StateKey {self.name}>"


class State:
    """A small typed store: ``state[KEY]`` has the type ``KEY`` was declared with."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StateKey[Any], Any] = {}

    def __getitem__(self, key: StateKey[T]) -> T:
        return cast(T, self._data[key])

    def __setitem__(self, key: StateKey[T], value: T) -> None:
        self._data[key] = value

    def __contains__(self, key: StateKey[Any]) -> bool:
        return key in self._data

    @overload
    def get(self, key: StateKey[T]) -> T | None: ...
    @overload
    def get(self, key: StateKey[T], default: T) -> T: ...
    def get(self, key: StateKey[T], default: Any = None) -> Any:
        return self._data.get(key, default)


# Keys the adapter itself sets; interceptors declare their own beside themselves.
CACHE_HIT = StateKey[bool]("cache_hit")
"""Set by a cache when the answer was replayed (no upstream call); read by the server for its counters."""
UPSTREAM_SECONDS = StateKey[float]("upstream_seconds")
"""Wall time spent on the upstream: to its whole body, or for a stream from the request to its last event (set by
the transport)."""
CACHE_KEY = StateKey[str]("cache_key")
"""The key a cache stored (or looked up) the answer under, set by the cache once it is known."""
CACHE_SLOT = StateKey[int]("cache_slot")
"""Which stored answer of that key the request got (0, or the k-th sample of a pass@k run), set by the cache."""
