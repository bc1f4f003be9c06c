"""Reading YAML and JSON that someone else wrote (a run dir, a store, a user's file), with bounds.

Every YAML evalproxy reads goes through :func:`load_yaml`: a safe loader that refuses alias expansion past a small
bound (a 700-byte "billion laughs" file otherwise grows to gigabytes in whoever walks it) and nesting past
:data:`MAX_DEPTH` (the parser recurses). JSON is read with :func:`load_json`, which refuses nesting past the same
depth, so no reader walks a value deep enough to reach Python's recursion limit. A file (or an archive's member)
is read whole only up to a size (:func:`read_bounded`): a run dir's 20 GB "results" file is refused, never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from evalproxy.adapter.core.errors import ConfigError

MAX_DEPTH = 100
"""Deepest nesting accepted in a file read (the proxy's own ``max_json_depth`` default)."""
MAX_YAML_ALIASES = 100
"""Alias references (``*name``, ``<<: *name``) one YAML document may hold."""
MAX_YAML_ALIAS_NODES = 10_000
"""Nodes that aliases may add to a YAML document once expanded (each reference counts its whole anchored tree)."""
MAX_FILE_BYTES = 512 * 2**20
"""The largest JSON file (or archive member) read whole: a harness's results, an inspect log (its ``.eval`` format
keeps each sample in a member of its own, so only a ``.json`` log of a very large evaluation comes near)."""
MAX_YAML_BYTES = 64 * 2**20
"""The largest YAML file read (configs and run records are kilobytes; parsing YAML costs ~100x its size in memory)."""


def too_large(size: int, limit: int, source: str) -> ValueError:
    """The error of a file or member past its bound."""
    return ValueError(f"{source} is larger than {limit / 2**20:.0f} MiB ({size} bytes or more): not read")


def read_bounded(path: str | Path, limit: int | None = None) -> bytes:
    """A file's bytes, or a ``ValueError`` naming it when it holds more than ``limit`` (:data:`MAX_FILE_BYTES` by
    default; never more than ``limit`` + 1 bytes are read, whatever its size says; ``OSError`` as ``open`` raises
    it)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_large(len(data), limit, str(path))
    return data


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts, while composing, alias references, the nodes they would add and depth."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.alias_nodes = 0
        self.depth = 0
        self.sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self.aliases += 1
            self.alias_nodes += self.sizes.get(id(node), 1)
            if self.aliases > MAX_YAML_ALIASES or self.alias_nodes > MAX_YAML_ALIAS_NODES:
                raise _Refused(f"YAML aliases expand too far (more than {MAX_YAML_ALIASES} references or "
                               f"{MAX_YAML_ALIAS_NODES} nodes): refused")
            return node
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(f"YAML nested deeper than {MAX_DEPTH} levels: refused")
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if node is not None:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self.sizes.get(id(v), 1) for v in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self.sizes.get(id(k), 1) + self.sizes.get(id(v), 1) for k, v in node.value)
            self.sizes[id(node)] = size
        return node


class _Refused(yaml.YAMLError):
    """A YAML document past one of the bounds."""


def load_yaml(text: str | bytes, *, source: str | None = None) -> Any:
    """The YAML document in ``text`` (plain data, as ``yaml.safe_load``), or a ``ConfigError`` naming ``source``
    when it is not YAML, nests past :data:`MAX_DEPTH` or expands aliases past the bounds above."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(str(exc), file=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=source) from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """:func:`load_yaml` of a file (``OSError`` as ``open`` raises it; a ``ConfigError`` past
    :data:`MAX_YAML_BYTES`)."""
    p = Path(path)
    try:
        data = read_bounded(p, MAX_YAML_BYTES)
    except ValueError as exc:
        raise ConfigError(str(exc), file=str(p)) from None
    return load_yaml(data.decode("utf-8"), source=str(p))


def count_nodes(obj: Any, max_nodes: int | None = None, max_depth: int = MAX_DEPTH) -> int | None:
    """How many values ``obj`` (plain data) holds, itself included; ``None`` as soon as there are more than
    ``max_nodes`` or containers nest deeper than ``max_depth``. Walked without recursion, never past the bounds."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    n = 0
    while stack:
        value, depth = stack.pop()
        n += 1
        if max_nodes is not None and n > max_nodes:
            return None
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > max_depth:
            return None
        stack.extend((v, depth + 1) for v in children)
        if max_nodes is not None and n + len(stack) > max_nodes:
            return None
    return n


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``obj`` (plain data) nests more than ``limit`` containers deep; walked without recursion."""
    return count_nodes(obj, None, limit) is None


def load_json(data: str | bytes, *, source: str | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``data``; a ``ValueError`` naming ``source`` when it is not JSON or nests past
    ``max_depth`` (orjson itself refuses past 1024 levels, Python's ``json`` would raise ``RecursionError``)."""
    where = f"{source}: " if source else ""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}not JSON (or nested too deep): {exc}") from None
    if too_deep(value, max_depth):
        raise ValueError(f"{where}JSON nested deeper than {max_depth} levels")
    return value
