"""The shared store: Redis (6+) or Valkey by URL, for many proxies on many machines, over ``redis.asyncio``.

``redis://host:6379/0``, ``rediss://...`` (TLS) or ``unix:///path/redis.sock``; two query parameters are ours and
are taken off before the URL reaches the client: ``prefix`` (default ``evalproxy:``; several projects share one
server) and ``timeout`` (seconds, default 2: bounds every store call, connecting included).

Layout, every key under the prefix ``P``::

    P answers               hash  "<key>:<slot>" -> an encoded answer (the same bytes and checksum as on disk)
    P lease:<key>:<slot>    string "<deadline>|<owner>|<host>|<pid>", SET NX PX: who fills that slot now, until
                            <deadline> (ms by the server's clock, TIME); the key's TTL is only a backstop
    P next:<run>:<key>      string counter: the run's next new pass@k slot of a key
    P free:<run>:<key>      sorted set of slots handed back by failed samples (the lowest is taken first)
    P pairs / P pair        sorted set by arrival time (wall clock) / hash member -> saved pair (JSON)
    P failures / P failure  the same for failed requests, at most MAX_FAILURES
    P dict / P dicts        string: the id of the compression dictionary answers are written with / hash
                            id -> every dictionary the store's answers may need (storage/codec.py)

A claim is one Lua operation (next slot, look the slot up, lease it if empty), so it is atomic across every proxy on the
server; finishing a slot (answer, pair, lease released) and abandoning one (lease released, slot handed back) are one
operation each. The operations asked for in one turn of the event loop, by every request of this process, go to the
server together as one call of one script (:class:`TurnBatch`, on connections of its own, outside the pool), as the disk
store commits a turn's calls in one transaction: a miss costs one round trip before the upstream call and one after, a
hit one, and under load a round trip serves many requests. A deterministic request's claim goes in its batch as a
"look": the script only asks whether its answer is there and leases an empty slot, and the answers of the batch's looks
are read by one plain ``HMGET`` sent with the script call, never through Lua; likewise the answers and saved pairs a
batch writes go by plain ``HSET``s sent before the script call, in the same write (the settling script releases the
lease after them: a reader that sees the lease gone finds the answer). Answers are stored compressed
(:mod:`evalproxy.storage.codec`; a large one is compressed and decompressed in a thread). A lease lives
``lease_seconds`` (default LEASE_SECONDS) unless renewed, by the server's own clock: the scripts read ``TIME`` (once per
call) and keep the lease's deadline in its value, so a lease key that lost its TTL or never had one (a crashed writer, a
hand-made ``SET``) still expires. A claim takes over a lease past its deadline, one whose value has no deadline and
whose key has no TTL, and one whose deadline lies further ahead than one lease (no holder sets that); a value without a
deadline but with a TTL (a proxy of an older version) holds until its TTL runs out. Every proxy sharing a server must
use one lease length. On this host, a lease whose process died is taken over at once, as the disk store does. After a
failed call (server down, timeout) the store refuses calls for a short while without touching the network, so a dead
server costs requests nothing; the pool and the batches' connections reconnect by themselves.

Errors, translated at :meth:`RedisStore._call` into the ``StoreError`` subtree (the caching interceptor counts them
and passes requests through)::

    StoreUnavailableError   unreachable, refused (authentication), or no answer within the timeout; raised at once
                            while known down
    StoreFullError          the server is at its maxmemory (OOM)
    StoreReadOnlyError      a read-only replica
    StoreError              anything else the server refuses (a Redis older than 6, a key of another type)
    StoreClosedError        a call after aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aredis
import zstandard
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

import evalproxy.storage.codec as codec
from evalproxy.adapter.core.errors import (
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
)
from evalproxy.adapter.core.errors import StoreUnavailableError as StoreUnavailableError  # re-exported
from evalproxy.adapter.core.redact import redact_url
from evalproxy.storage.base import (
    HOST,
    LEASE_SECONDS,
    MAX_FAILURES,
    Claim,
    Failure,
    SavedPair,
    StoreClosedError,
    StoredAnswer,
    answer_key,
    decode_answer,
    encode_answer,
    holder_gone,
)

log = logging.getLogger("evalproxy.store")

T = TypeVar("T")
DEFAULT_PREFIX = "evalproxy:"
DEFAULT_TIMEOUT = 2.0
RETRY_AFTER = 1.0
"""After a failed call, seconds during which calls fail at once; the next call after it tries the server again."""

# Lua shared by the lease scripts: the server's clock in ms (read once per script call: every operation of a batch
# runs at one instant of the server), a lease value for a holder, and who holds a lease. Numbers are written with
# '%d' (integer formatting), not Lua's own '%.14g' (C's floating-point formatting, several times slower).
_LEASE_LUA = """
local NOW
local function now_ms()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end
local function lease_value(deadline, holder)
  return string.format('%d|', deadline) .. holder
end
-- (deadline or nil, holder) of a lease value "<deadline ms>|<holder>"; a value without a deadline is all holder
local function parse_lease(v)
  if not v then return nil, nil end
  local sep = string.find(v, '|', 1, true)
  local deadline = sep and tonumber(string.sub(v, 1, sep - 1))
  if deadline then return deadline, string.sub(v, sep + 1) end
  return nil, v
end
"""

# Each operation is a Lua function of its own keys K and arguments A; a batch (:class:`TurnBatch`) runs any number of
# them in one script call, each under pcall, so one failing operation (a key of another type) fails only itself.
#
# claim   K: answers, lease base ("P lease:<key>"), next, free. A: key, holder ("<owner>|<host>|<pid>"), lease ms,
#         slot ("next": the run's next one), reuse ("1"/""), a stale lease value to take over ("" for none). Returns
#         one string "<slot>|<code>|<payload>" (one field to frame and parse, not four: a hit's one operation): code
#         0 an answer (payload), 1 leased, 2 someone else fills the slot (payload: the lease value). A lease past
#         its deadline by the server's clock, without one (and without a TTL), or with a deadline further ahead than
#         one lease is taken over.
# settle  K: lease, pairs, free. A: holder, pair member ("" none), pair score, slot to hand back ("" none). finish
#         and abandon in one step each: the answer and the pair's record are written before the script call (plain
#         HSETs in the same write, TurnBatch.run's puts), settle indexes the pair and releases the lease.
# renew   K: lease keys. A: holder, lease ms. Moves the deadline (and the TTL) of the holder's leases.
# pair    K: pairs zset. A: score, member (its record written before the script call, as settle's).
# failure K: failures zset, failure hash. A: score, member, record, bound. Returns 1 if kept, 0 at the bound.
# dict    K: the current dictionary's id, the dictionaries hash. A: the id this process writes with ("" none), a
#         new dictionary's id and bytes ("" "": only read; "-": none from now on), the bound on dictionaries.
#         Compare-and-set: publishes only if the store's current id is still A[1] and, for a new dictionary, the hash
#         holds fewer than the bound. Returns {the current id ("" none), its bytes unless it is A[1] or A[2] (""),
#         1 if the bound refused it}.
_OPS_LUA = _LEASE_LUA + """
local function claimed(slot, code, payload)
  return string.format('%d|%d|', slot, code) .. payload
end

-- Lease the slot's key to a holder for ms unless a live lease holds it: 1 (leased), or 2 and the lease value held.
-- A lease past its deadline by the server's clock, without one (and without a TTL), with a deadline further ahead
-- than one lease, or the stale value named is taken over.
local function lease(key, holder, ms, stale)
  local now, span = now_ms(), tonumber(ms)
  local value = lease_value(now + span, holder)
  if redis.call('SET', key, value, 'NX', 'PX', ms) then return 1, '' end
  local held = redis.call('GET', key)
  if held then
    local deadline = parse_lease(held)
    if not deadline then
      local ttl = redis.call('PTTL', key)
      if ttl > 0 then deadline = now + ttl end
    end
    if not deadline or deadline <= now or deadline > now + span or (stale ~= '' and held == stale) then
      redis.call('SET', key, value, 'PX', ms)
      return 1, ''
    end
  end
  return 2, held or ''
end

local function claim(K, A)
  local slot
  if A[4] == 'next' then
    local free = redis.call('ZPOPMIN', K[4])
    if free[1] then slot = tonumber(free[1]) else slot = redis.call('INCR', K[3]) - 1 end
  else
    slot = tonumber(A[4])
  end
  if A[5] ~= '1' then return claimed(slot, 1, '') end
  local answer = redis.call('HGET', K[1], A[1] .. ':' .. slot)
  if answer then return claimed(slot, 0, answer) end
  return claimed(slot, lease(K[2] .. ':' .. slot, A[2], A[3], A[6]))
end

local function settle(K, A)
  if A[2] ~= '' then redis.call('ZADD', K[2], A[3], A[2]) end
  local _, holder = parse_lease(redis.call('GET', K[1]))
  if holder == A[1] then redis.call('DEL', K[1]) end
  if A[4] ~= '' then redis.call('ZADD', K[3], A[4], A[4]) end
  return 1
end

local function renew(K, A)
  local value = lease_value(now_ms() + tonumber(A[2]), A[1])
  for _, k in ipairs(K) do
    local _, holder = parse_lease(redis.call('GET', k))
    if holder == A[1] then redis.call('SET', k, value, 'PX', A[2]) end
  end
  return 1
end

local function pair(K, A)
  redis.call('ZADD', K[1], A[1], A[2])
  return 1
end

local function dict(K, A)
  local cur = redis.call('GET', K[1]) or ''
  local full = 0
  if A[2] ~= '' and cur == A[1] then
    if A[2] == '-' then
      redis.call('DEL', K[1])
      cur = ''
    elseif redis.call('HEXISTS', K[2], A[2]) == 1 or redis.call('HLEN', K[2]) < tonumber(A[4]) then
      redis.call('HSET', K[2], A[2], A[3])
      redis.call('SET', K[1], A[2])
      cur = A[2]
    else
      full = 1
    end
  end
  local data = ''
  if cur ~= '' and cur ~= A[1] and cur ~= A[2] then data = redis.call('HGET', K[2], cur) or '' end
  return {cur, data, full}
end

local function failure(K, A)
  if redis.call('ZCARD', K[1]) >= tonumber(A[4]) then return 0 end
  redis.call('ZADD', K[1], A[1], A[2])
  redis.call('HSET', K[2], A[2], A[3])
  return 1
end
"""

# ARGV[1]: the batch, per operation its name, its number of keys and of arguments (4-byte big-endian integers), its
# keys and its arguments; the name, each key and each argument as a 4-byte big-endian length and its bytes (read by
# struct.unpack, many fields a call). Returns one string, every field "<length>:<bytes>", per operation "V" and a
# value, "T", a count and that many values (a table), or "E" and an error message (the operation failed; the others
# still ran). One argument and one string, not hundreds of each: packing and parsing them was most of a batch's cost
# in the client.
# ARGV[2..], only in a batch with looks (TurnBatch.look: the claims of deterministic requests, a cache hit's path): the
# answers hash, the lease keys' prefix ("P lease:"), the lease ms, the number n of looks, their n answer fields
# ("<key>:0") and their n holders. Each look, after the operations (an answer the turn finished is found), asks
# whether its answer is there and leases its slot as a claim does if not; the looks' results follow the operations',
# one field each, "<length>:<code><payload>": the claim's codes 0 (the answer is there), 1 (leased), 2 (the lease value
# of whoever fills the slot), or 9 and an error message. The answers are read by an HMGET sent right after the script
# call (:class:`LookCall`): bytes that pass through Lua cost the server far more than the commands (every string is
# copied and feeds Lua's garbage collector; bench/redis_script_cost.py): a hit as a claim operation cost it 9 us of a
# 200 B answer, 33 us of 2.5 KB, 120 us of 10 KB; as a look ~3 us, whatever the answer's size.
_BATCH = _OPS_LUA + """
local OPS = {claim = claim, settle = settle, renew = renew, pair = pair, failure = failure, dict = dict}
local B, pos, out, FMT = ARGV[1], 1, {}, {}
-- n fields from pos on, in struct.unpack calls of up to 64 fields each (one C call, not four Lua calls, a field)
local function fields(n)
  if n <= 64 then  -- the common case: one call, its values kept as they come
    local f = FMT[n]
    if not f then f = '>' .. string.rep('I4c0', n); FMT[n] = f end
    local V = {struct.unpack(f, B, pos)}
    pos = V[n + 1]
    V[n + 1] = nil
    return V
  end
  local V, j = {}, 0
  while j < n do
    local m = math.min(n - j, 64)
    local f = FMT[m]
    if not f then f = '>' .. string.rep('I4c0', m); FMT[m] = f end
    local got = {struct.unpack(f, B, pos)}
    for i = 1, m do V[j + i] = got[i] end
    pos = got[m + 1]
    j = j + m
  end
  return V
end
local function put(v)
  if type(v) == 'number' then v = string.format('%d', v) else v = tostring(v) end
  out[#out + 1] = string.format('%d:', #v) .. v
end
while pos <= #B do
  local name, nk, na
  name, nk, na, pos = struct.unpack('>I4c0I4I4', B, pos)
  local fn, V = OPS[name], fields(nk + na)
  local K, A = {unpack(V, 1, nk)}, {unpack(V, nk + 1, nk + na)}
  local ok, res = pcall(fn, K, A)
  if not ok then
    put('E')
    put(type(res) == 'table' and (res.err or 'ERR') or res)
  elseif type(res) == 'table' then
    put('T')
    put(#res)
    for _, v in ipairs(res) do put(v) end
  else
    put('V')
    put(res)
  end
end
-- The looks (TurnBatch.look): whether each answer is there, its slot leased if not; the answers themselves are read by
-- the HMGET sent after this call, never through Lua.
local function look(answers, field, leases, holder, ms)
  if redis.call('HEXISTS', answers, field) == 1 then return 0, '' end
  return lease(leases .. field, holder, ms, '')
end
local n, k = tonumber(ARGV[5] or '0'), #out
for j = 1, n do
  local ok, code, v = pcall(look, ARGV[2], ARGV[5 + j], ARGV[3], ARGV[5 + n + j], ARGV[4])
  if not ok then code, v = 9, type(code) == 'table' and (code.err or 'ERR') or tostring(code) end
  out[k + 1] = string.format('%d:%d', #v + 1, code)
  out[k + 2] = v
  k = k + 2
end
return table.concat(out)
"""

_BATCH_SHA = hashlib.sha1(_BATCH.encode()).hexdigest().encode()  # the name Redis gives the script


_U32 = struct.Struct(">I").pack


def pack_op(op: str, keys: list[Any], args: list[Any]) -> bytes:
    """One operation in the framing :data:`_BATCH` reads (its name, its numbers of keys and of arguments, its keys,
    its arguments); a batch is its operations joined."""
    name = op.encode()
    parts = [_U32(len(name)), name, _U32(len(keys)), _U32(len(args))]
    for x in (*keys, *args):
        t = type(x)
        b = x.encode() if t is str else x if t is bytes else _bytes(x)
        parts.append(_U32(len(b)))
        parts.append(b)
    return b"".join(parts)


def _bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, float):
        return repr(x).encode()
    return b"%d" % x


def unpack_results(blob: bytes, ops: int, looks: int = 0, answers: list[bytes | None] | None = None) -> list[Any]:
    """The results :data:`_BATCH` returns: one per operation (bytes, a list of bytes, or a redis-py error), then one
    per look, (code, payload) or a redis-py error (code 9: its message); a look's answer is taken from ``answers``
    (the HMGET's reply). An answer the script saw but the HMGET did not (deleted in between by another client) is
    (2, b""): the caller looks again shortly, as for a slot someone else fills."""
    out: list[Any] = []
    pos, index = 0, blob.index
    for _ in range(ops):
        tag = blob[pos + 2]  # the tag is one byte: "1:V", "1:T" or "1:E"
        colon = index(b":", pos + 3)
        stop = colon + 1 + int(blob[pos + 3 : colon])
        value = blob[colon + 1 : stop]
        pos = stop
        if tag == 86:  # V: one value
            out.append(value)
        elif tag == 84:  # T: a count, then that many values
            items = []
            for _ in range(int(value)):
                colon = index(b":", pos)
                stop = colon + 1 + int(blob[pos:colon])
                items.append(blob[colon + 1 : stop])
                pos = stop
            out.append(items)
        else:  # E: the operation's error message
            out.append(server_error(value.decode("utf-8", "replace")))
    for _ in range(looks):  # "<length>:<code><payload>"
        colon = index(b":", pos)
        stop = colon + 1 + int(blob[pos:colon])
        code, value = blob[colon + 1] - 48, blob[colon + 2 : stop]
        if code == 0:
            answer = answers[len(out) - ops] if answers is not None else None
            out.append((0, answer) if answer is not None else (2, b""))
        else:
            out.append((code, value) if code != 9 else server_error(value.decode("utf-8", "replace")))
        pos = stop
    if pos != len(blob):
        raise InvalidResponse(f"the batch script's reply has {len(blob) - pos} bytes past its results")
    return out


def server_error(message: str) -> RedisError:
    """redis-py's error for an error reply of the server (or of an operation of the batch script)."""
    kind = (OutOfMemoryError if message.startswith("OOM") else
            RedisReadOnlyError if message.startswith("READONLY") else
            NoScriptError if message.startswith("NOSCRIPT") else
            BusyLoadingError if message.startswith("LOADING") else ResponseError)
    return kind(message)


def parse_location(url: str) -> tuple[str, str, float]:
    """(client URL, prefix, timeout) from a store URL with our own ``prefix`` and ``timeout`` query parameters."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("prefix", "timeout")}
    rest = [(k, v) for k, v in query if k not in ("prefix", "timeout")]
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return client_url, ours.get("prefix", DEFAULT_PREFIX), float(ours.get("timeout", DEFAULT_TIMEOUT))


def store_error(exc: BaseException, location: str, timeout: float) -> BaseException:
    """What a failure of redis-py (or of the network under it) means, as the ``StoreError`` subtree (its cause
    kept); anything else is returned as it is."""
    error: StoreError
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError):
        what = (f"did not answer within {timeout:g} s" if isinstance(exc, TimeoutError | RedisTimeoutError)
                else f"is unreachable ({exc})")
        error = StoreUnavailableError(f"the store at {location} {what}")
    elif isinstance(exc, OutOfMemoryError):
        error = StoreFullError(f"the store at {location} is full (maxmemory): {exc}")
    elif isinstance(exc, RedisReadOnlyError):
        error = StoreReadOnlyError(f"the store at {location} is read-only: {exc}")
    elif isinstance(exc, RedisError):
        error = StoreError(f"the store at {location} refused: {type(exc).__name__}: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


def with_prefix(location: str, prefix: str) -> str:
    """A store URL that names its prefix: the location ``stats`` reports (the disk store's keys, no more; a URL that
    opens this very store)."""
    if "prefix" in dict(parse_qsl(urlsplit(location).query)):
        return location
    return f"{location}{'&' if '?' in location else '?'}{urlencode({'prefix': prefix})}"


def _pid_dead(holder: str) -> bool:
    """Whether a lease value ("[<deadline>|]<owner>|<host>|<pid>") names a process on this host that is gone."""
    try:
        _, host, pid = holder.rsplit("|", 2)
        return holder_gone(host, int(pid))
    except ValueError:
        return False


class LookCall(NamedTuple):
    """What a batch's looks add to its script call: the script's further arguments (RESP bulk strings) and their
    number, then the HMGET of their answers, sent right after the script call (one round trip for both), and its
    number of fields."""

    args: bytes = b""
    more: int = 0
    read: bytes = b""
    fields: int = 0


NO_LOOKS = LookCall()

Put = tuple[str, bytes, bytes]
"""A field an operation writes by a plain HSET before the script call: (hash key, field, value)."""


class PreWrites(NamedTuple):
    """The HSETs a batch sends before its script call, in the same write (RESP), and their number."""

    data: bytes = b""
    commands: int = 0


NO_WRITES = PreWrites()

Reply = tuple[bytes, "list[bytes | None] | None", "list[ResponseError | None]"]
"""What one batch call gets back: the script's reply, the looks' answers, and each pre-write's error or None."""


def pre_writes(puts: list[tuple[Put, ...]]) -> tuple[PreWrites, list[list[int]]]:
    """The operations' puts as one HSET per hash, and for each HSET the operations whose puts it carries (a refused
    HSET fails them). A field written twice keeps its last value, as two HSETs in the script did."""
    by_key: dict[str, tuple[list[bytes], list[int]]] = {}
    for i, op_puts in enumerate(puts):
        for key, field, value in op_puts:
            items, whose = by_key.setdefault(key, ([], []))
            items += (field, value)
            whose.append(i)
    commands = [b"*%d\r\n$4\r\nHSET\r\n" % (len(items) + 2) + _bulks([key.encode(), *items])
                for key, (items, _) in by_key.items()]
    return PreWrites(b"".join(commands), len(commands)), [whose for _, whose in by_key.values()]


def _bulks(items: list[bytes]) -> bytes:
    return b"".join([b"$%d\r\n%s\r\n" % (len(x), x) for x in items])


class TurnBatch:
    """The store's operations asked for in one turn of the event loop, sent as one call of one script: one round trip
    for all of them, as the disk store commits a turn's calls in one transaction.

    ``await batch.run(op, keys, args)`` queues an operation of :data:`_BATCH` (claim, settle, renew, pair, failure),
    ``await batch.look(field, holder)`` a deterministic request's claim (:meth:`look`); the first one of a turn
    schedules the send at the end of that turn. At most :attr:`MAX_IN_FLIGHT` batches are
    at the server at once; what is asked for meanwhile waits and goes in the next batch, so under load batches grow
    by themselves (a lone request is a batch of one). Each operation runs under ``pcall`` in the script: one that
    fails (a key of another type) fails only its caller; a batch that fails as a whole (server down, timeout, full)
    fails every caller in it. The round trip goes through the store's guarded call (timeout, down, errors)."""

    MAX_OPS = 512
    MAX_BYTES = 4 * 2**20
    """A batch closes at this many bytes of packed operations, answers included (a few large answers go in batches
    of their own: one script call never carries more than the store's timeout can cover)."""
    MAX_IN_FLIGHT = 2

    def __init__(self, script: Callable[[bytes, LookCall, PreWrites], Awaitable[Reply]],
                 call: Callable[[Awaitable[Any]], Awaitable[Any]], error: Callable[[BaseException], BaseException],
                 head: Callable[[], list[bytes]]) -> None:
        self._script, self._call, self._error, self._head = script, call, error, head
        self._outbox: list[tuple[bytes, asyncio.Future[Any], tuple[Put, ...]]] = []
        """Each operation packed as it is asked for (:func:`pack_op`), its caller's future and its puts."""
        self._looks: list[tuple[bytes, bytes, asyncio.Future[tuple[int, bytes]]]] = []
        self._sizes: list[int] = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        """Batches sent so far (for tests and benchmarks)."""

    def run(self, op: str, keys: list[Any], args: list[Any], puts: tuple[Put, ...] = ()) -> asyncio.Future[Any]:
        """Queue ``op``; ``puts`` (hash, field, value) are written by a plain HSET sent before the script call, in the
        same write (answers and pairs: bytes that pass through Lua cost the server far more than the commands)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        data = pack_op(op, keys, args)
        self._outbox.append((data, fut, puts))
        self._sizes.append(len(data) + sum(len(v) for _, _, v in puts))
        self._schedule(loop)
        return fut

    def look(self, field: bytes, holder: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """The claim of a deterministic request's slot (``field``: "<key>:0"), for ``holder``: (0, the answer), (1,
        b"") leased, or (2, the lease value of whoever fills it), as the claim operation's. A cache hit's path, at a
        fraction of the claim operation's cost: a look is two plain arguments of the script (no framing to pack or
        unpack in Lua), the script only asks ``HEXISTS`` and leases an empty slot, and the answers of the batch's
        looks are read by one ``HMGET`` sent with the script call (:class:`LookCall`), not through Lua."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._looks.append((field, holder, fut))
        self._schedule(loop)
        return fut

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first call of a turn sends the batch at the end of that turn."""
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while (self._outbox or self._looks) and len(self._in_flight) < self.MAX_IN_FLIGHT:
            n, size = min(1, len(self._outbox)), self._sizes[0] if self._sizes else 0
            while n < min(len(self._outbox), self.MAX_OPS) and size + self._sizes[n] <= self.MAX_BYTES:
                size += self._sizes[n]
                n += 1
            ops, self._outbox, self._sizes = self._outbox[:n], self._outbox[n:], self._sizes[n:]
            looks, self._looks = self._looks[: self.MAX_OPS], self._looks[self.MAX_OPS :]
            task = asyncio.get_running_loop().create_task(self._send(ops, looks), name="evalproxy-redis-batch")
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if (self._outbox or self._looks) and not self._scheduled:
            self._flush()

    def _look_call(self, looks: list[tuple[bytes, bytes, Any]]) -> LookCall:
        if not looks:
            return NO_LOOKS
        head, fields = self._head(), [f for f, _, _ in looks]
        args = [*head, b"%d" % len(looks), *fields, *[h for _, h, _ in looks]]
        read = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2) + _bulks([head[0], *fields])
        return LookCall(_bulks(args), len(args), read, len(fields))

    async def _send(self, ops: list[tuple[bytes, asyncio.Future[Any], tuple[Put, ...]]],
                    looks: list[tuple[bytes, bytes, asyncio.Future[tuple[int, bytes]]]]) -> None:
        self.round_trips += 1
        futs = [fut for _, fut, _ in ops] + [fut for _, _, fut in looks]
        pre, owners = pre_writes([puts for _, _, puts in ops])
        try:
            blob, answers, refused = await self._call(self._script(b"".join([data for data, _, _ in ops]),
                                                                   self._look_call(looks), pre))
            results = unpack_results(blob, len(ops), len(looks), answers)
            for error, whose in zip(refused, owners, strict=True):
                for i in whose if error is not None else ():
                    results[i] = error  # its write refused (the hash is of another type): the caller's failure
        except Exception as exc:  # the whole batch failed: each caller gets the error (one instance each)
            for fut in futs:
                if not fut.done():
                    fut.set_exception(_copy(exc))
            return
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for fut in futs:
                fut.cancel()
            raise
        for fut, result in zip(futs, results, strict=True):
            if fut.done():
                continue  # its caller went away; the operation ran all the same
            if isinstance(result, RedisError):
                fut.set_exception(self._error(result))
            else:
                fut.set_result(result)

    async def drain(self) -> None:
        """Send what is queued and wait for every batch at the server."""
        self._flush()
        while self._in_flight or self._outbox or self._looks:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            self._flush()


def _copy(exc: Exception) -> Exception:
    """A fresh instance of a store error for each caller that shares one failed batch (its cause kept)."""
    if isinstance(exc, StoreError):
        copy = type(exc)(str(exc))
        copy.__cause__ = exc.__cause__
        return copy
    return exc


class RedisDictionaries:
    """A Redis store's compression dictionaries (:class:`~evalproxy.storage.codec.Dictionaries`): ``P dict`` names
    the current one, ``P dicts`` holds every one by id. Asked for once before this process first writes; checked
    now and then in a thread (then the current id is read again: another process may have published one); trained
    in a thread when due, and published compare-and-set on the id it was judged against."""

    def __init__(self, batch: TurnBatch, redis: Any, call: Callable[[Awaitable[Any]], Awaitable[Any]],
                 prefix: str) -> None:
        self.batch, self.redis, self._call = batch, redis, call
        self.keys = [f"{prefix}dict", f"{prefix}dicts"]
        self.table = codec.Dictionaries()
        self._training: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None

    async def encode(self, answer: StoredAnswer) -> bytes:
        """The answer's bytes as stored, with the store's current dictionary; then what is due (a check, training)
        starts in the background."""
        if not self.table.checked:
            await self._sync()
        blob = await encode_answer(answer, self.table)
        loop = asyncio.get_running_loop()
        if self.table.pending is not None and (self._checking is None or self._checking.done()):
            self._checking = loop.create_task(self._check(), name="evalproxy-dictionary-check")
        if self.table.take_due():
            self._training = loop.create_task(self._train(), name="evalproxy-dictionary")
        return blob

    async def _sync(self, judged: int | None = None, new: int | str = "", data: bytes = b"") -> bool:
        """Run the ``dict`` operation, publishing ``new`` (a dictionary's id and ``data``; "-" for none) in place of
        ``judged``, or only reading; then write with the store's current dictionary. Whether the bound refused
        ``new``."""
        t = self.table
        if new == "":
            judged = t.current if t.checked else None
        cur, got, full = await self.batch.run("dict", self.keys, ["" if judged is None else judged, new, data,
                                                                  codec.MAX_DICTS])
        dict_id = int(cur) if cur.isdigit() else None
        if got or (data and dict_id == new):
            t.add_all([got or data])
        t.use_id(dict_id if dict_id in t.known else None)
        return bool(int(full))

    async def publish(self, judged: int | None, data: bytes) -> bool:
        """Make ``data`` (empty: no dictionary) the store's current dictionary if ``judged`` still is (the one this
        process judged stale; None: the store had none), then write with the store's current one; whether the bound
        (codec.MAX_DICTS) refused it."""
        return await self._sync(judged, zstandard.ZstdCompressionDict(data).dict_id() if data else "-", data)

    async def _check(self) -> None:
        try:
            await asyncio.to_thread(self.table.run_check)
            await self._sync()
        except Exception as exc:  # the next check tries again
            log.warning("the compression dictionary could not be checked (%s: %s)", type(exc).__name__, exc)

    async def _train(self) -> None:
        full = False
        try:
            data = await asyncio.to_thread(self.table.train)
            if data is not None:
                full = await self.publish(self.table.base, data)
        except Exception as exc:  # answers are compressed as before meanwhile
            log.warning("the compression dictionary could not be stored (%s: %s)", type(exc).__name__, exc)
        finally:
            self.table.done_training(full)

    async def decode(self, key: str, slot: int, blob: bytes) -> StoredAnswer | None:
        """The answer of an entry (decompressed in a thread when large), None when damaged (logged)."""
        try:
            try:
                return await decode_answer(blob, self.table)
            except codec.MissingDictionary:  # written with a dictionary another process published: load it
                await self.load()
                return await decode_answer(blob, self.table)
        except Exception as exc:
            log.warning("cache entry %s:%d is corrupted (%s): the request goes upstream", key, slot, exc)
            return None

    async def load(self) -> None:
        """Hold every dictionary the store has (a frame named one this process did not know), and write with the
        store's current one."""
        self.table.add_all(await self.all())
        if self.table.checked:
            await self._sync()

    async def all(self) -> list[bytes]:
        return list(await self._call(self.redis.hvals(self.keys[1])))

    async def put(self, items: list[bytes]) -> None:
        held = self.table.add_all(items)
        if held:
            await self._call(self.redis.hset(self.keys[1], mapping={
                zstandard.ZstdCompressionDict(d).dict_id(): d for d in held}))

    async def aclose(self) -> None:
        await asyncio.gather(*(t for t in (self._training, self._checking) if t is not None), return_exceptions=True)


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """A reply read off the stream: a lost connection as redis-py's ConnectionError, an unreadable reply (a length
    that is no number, a line past the stream's limit) as its InvalidResponse."""
    try:
        yield
    except (asyncio.IncompleteReadError, OSError) as exc:
        raise RedisConnectionError(f"the connection was lost ({exc})") from exc
    except ValueError as exc:
        raise InvalidResponse(f"unreadable reply to {what} ({exc})") from exc


def _stream_of(conn: Any) -> asyncio.StreamReader | None:
    """A redis-py connection's stream, to read a reply off; None for a redis-py that keeps it elsewhere (``_reader``
    is its private name, in 5 to 8): its own parser reads it then."""
    if not hasattr(conn, "_reader"):
        return None
    reader: asyncio.StreamReader | None = conn._reader
    if reader is None:
        raise RedisConnectionError("the connection is closed")
    return reader


async def read_reply(conn: Any) -> bytes:
    """The batch script's reply (one bulk string) read off a redis-py connection's stream. Not through redis-py's
    parser: its layers (a coroutine per level, buffer bookkeeping, a copy of the reply) cost the client more than
    the read itself, and the reply is always one string or one error. Only batch calls use these connections, and
    redis-py's parser holds nothing of a reply between calls. No timeout here: the store's bounds every call. A
    redis-py whose connections keep their stream elsewhere (``_reader`` is its private name, in 5 to 8) is read
    through its own parser."""
    reader = _stream_of(conn)
    if reader is None:
        return bytes(await conn.read_response(timeout=math.inf))
    with _reading("the batch script"):
        line = await reader.readline()
        if line[:1] == b"$" and line[-2:] == b"\r\n" and not line.startswith(b"$-"):  # ($-1: nil, never sent)
            data = await reader.readexactly(int(line[1:-2]) + 2)
            return data[:-2]
    if line[:1] == b"-" and line[-2:] == b"\r\n":
        raise server_error(line[1:-2].decode("utf-8", "replace"))
    if not line.endswith(b"\n"):
        raise RedisConnectionError("the server closed the connection")
    raise InvalidResponse(f"unexpected reply to the batch script: {line[:40]!r}")


async def read_status(conn: Any) -> ResponseError | None:
    """The reply of one pre-write (an HSET sent before the script call): None (an integer: done), or the server's
    refusal. As :func:`read_reply`."""
    reader = _stream_of(conn)
    if reader is None:
        try:
            await conn.read_response(timeout=math.inf)
            return None
        except ResponseError as exc:
            return exc
    with _reading("a pre-write"):
        line = await reader.readline()
    if line[-2:] != b"\r\n":
        raise RedisConnectionError("the server closed the connection")
    if line[:1] == b":":
        return None
    if line[:1] == b"-":
        error = server_error(line[1:-2].decode("utf-8", "replace"))
        return error if isinstance(error, ResponseError) else ResponseError(str(error))
    raise InvalidResponse(f"unexpected reply to a pre-write: {line[:40]!r}")


async def read_values(conn: Any) -> list[bytes | None] | None:
    """The reply of the HMGET a batch's looks send after the script call: the answers (None: not there), or None if
    the server refused it (the script's looks then carry the error of their own). As :func:`read_reply`."""
    reader = _stream_of(conn)
    if reader is None:
        try:
            return list(await conn.read_response(timeout=math.inf))
        except ResponseError:
            return None
    with _reading("the looks' HMGET"):  # (a reply cut short, too)
        line = await reader.readline()
        if line[:1] == b"-" and line[-2:] == b"\r\n":
            return None
        if line[:1] != b"*" or line[-2:] != b"\r\n":
            raise ValueError(f"not an array: {line[:40]!r}")
        out: list[bytes | None] = []
        for _ in range(int(line[1:-2])):
            line = await reader.readline()
            if line == b"_\r\n":  # RESP3's null
                out.append(None)
                continue
            size = int(line[1:-2]) if line[:1] == b"$" and line[-2:] == b"\r\n" else None
            if size is None:
                raise ValueError(f"not a bulk string: {line[:40]!r}")
            out.append((await reader.readexactly(size + 2))[:-2] if size >= 0 else None)
        return out


class BatchConnections:
    """The connections the batch script is called on (:class:`TurnBatch`), kept outside the pool: taken from the
    pool for every call, the pool's bookkeeping, command packing and retry wrapper cost the client more than the call
    itself. At most ``TurnBatch.MAX_IN_FLIGHT`` are open, each idle between calls."""

    def __init__(self, pool: Any, redis: Any) -> None:
        self.pool, self.redis = pool, redis
        self._idle: list[Any] = []
        # The pool's settings but no socket timeout and no health check: every call is bounded by the store's own
        # timeout (``RedisStore._call``), and a stale connection is retried below. With a socket timeout, redis-py
        # wraps each send in ``asyncio.wait_for`` (a task of its own and two more turns of the loop on Python 3.11);
        # a health check is a PING round trip before the first call after 15 idle seconds.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 0}

    def _make(self) -> Any:
        return self.pool.connection_class(**self._kwargs)

    async def __call__(self, blob: bytes, looks: LookCall = NO_LOOKS, pre: PreWrites = NO_WRITES) -> Reply:
        """One call of the batch script with ``blob`` and ``looks``, after the HSETs ``pre``, on an idle connection
        or a new one: its reply, the reply of the looks' HMGET, and each pre-write's error or None. A kept
        connection that went stale (the server restarted) is tried once more, connected afresh; a script the server
        lost (restarted, flushed) is loaded again."""
        make = self._make
        conn = self._idle.pop() if self._idle else make()
        for attempt in (1, 2):
            try:
                reply = await self._evalsha(conn, blob, looks, pre)
            except RedisConnectionError:
                await conn.disconnect()
                if attempt == 2:
                    raise
                continue
            except ResponseError:  # the server refused the call (full, read-only): the connection itself is fine
                self._idle.append(conn)
                raise
            except BaseException:  # timed out or cancelled mid-call: what the connection holds is unknown
                await asyncio.shield(conn.disconnect(nowait=True))
                raise
            self._idle.append(conn)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def _evalsha(self, conn: Any, blob: bytes, looks: LookCall, pre: PreWrites) -> Reply:
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n$%d\r\n" % (4 + looks.more, _BATCH_SHA, len(blob))
        for attempt in (1, 2):
            # (Sent again after a lost script: the same fields, the same values.)
            await conn.send_packed_command([pre.data, head, blob, b"\r\n", looks.args, looks.read], check_health=False)
            written = [await read_status(conn) for _ in range(pre.commands)]
            refused: ResponseError | None = None
            try:
                reply = await read_reply(conn)
            except ResponseError as exc:
                reply, refused = b"", exc
            answers = await read_values(conn) if looks.fields else None  # read in any case: the stream stays in step
            if refused is None:
                return reply, answers, written
            if not isinstance(refused, NoScriptError) or attempt == 2:
                raise refused
            await self.redis.script_load(_BATCH)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for conn in self._idle:
            await conn.disconnect()
        self._idle.clear()


class RedisStore:
    """The :class:`~evalproxy.storage.base.Store` interface over a Redis or Valkey server."""

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float | None = None,
                 max_connections: int = 64, lease_seconds: float = LEASE_SECONDS) -> None:
        client_url, url_prefix, url_timeout = parse_location(url)
        self.lease_seconds = lease_seconds
        self.location = redact_url(url) or url
        self.prefix = prefix if prefix is not None else url_prefix
        self.timeout = timeout if timeout is not None else url_timeout
        self.pool = aredis.ConnectionPool.from_url(
            client_url, max_connections=max_connections, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, health_check_interval=15,
            # A pooled connection that went stale (the server restarted) is retried once on a fresh one.
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
        # Any: redis-py types its commands as "a value or an awaitable" for its sync and async clients at once.
        self.redis: Any = aredis.Redis(connection_pool=self.pool)
        p = self.prefix
        self.k_answers, self.k_pairs, self.k_pair = f"{p}answers", f"{p}pairs", f"{p}pair"
        self.k_failures, self.k_failure = f"{p}failures", f"{p}failure"
        self.batch_connections = BatchConnections(self.pool, self.redis)
        self.batch = TurnBatch(self.batch_connections, self._call, self._error, lambda: [
            self.k_answers.encode(), f"{self.prefix}lease:".encode(), b"%d" % self._lease_ms])
        self.dicts = RedisDictionaries(self.batch, self.redis, self._call, self.prefix)
        self._tag = secrets.token_hex(4)  # tells this process's saved pairs from another's with the same request id
        self._down_until = 0.0
        self._closed = False

    # -- every call goes through here --------------------------------------------------------------------------------
    async def _call(self, aw: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise StoreClosedError(f"the store at {self.location} is closed")
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise StoreUnavailableError(f"the store at {self.location} is down (retrying shortly)")
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> BaseException:
        """What a failure of redis-py (or of the network under it) means, as the ``StoreError`` subtree; a server
        that is unreachable or slow is taken as down for a short while."""
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError):
            self._down_until = time.monotonic() + RETRY_AFTER
        return store_error(exc, self.location, self.timeout)

    def _lease_value(self, owner: str) -> str:
        """The holder part of ``owner``'s lease values (the scripts put the deadline in front)."""
        return f"{owner}|{HOST}|{os.getpid()}"

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    def _lease(self, key: str, slot: int) -> str:
        return f"{self.prefix}lease:{key}:{slot}"

    # -- slots and leases ------------------------------------------------------------------------------------------
    async def _run_claim(self, key: str, run_id: str, slot: int | None, *, reuse: bool, owner: str,
                         stale: str = "") -> tuple[int, int, Any]:
        """The claim script: ``slot`` None takes the run's next slot of ``key``."""
        p = self.prefix
        keys = [self.k_answers, f"{p}lease:{key}", f"{p}next:{run_id}:{key}", f"{p}free:{run_id}:{key}"]
        args = [key, self._lease_value(owner), self._lease_ms, "next" if slot is None else slot,
                "1" if reuse else "", stale]
        got, code, payload = (await self.batch.run("claim", keys, args)).split(b"|", 2)
        return int(got), int(code), payload

    async def claim(self, key: str, run_id: str, *, sampled: bool, reuse: bool, owner: str) -> Claim:
        if reuse and not sampled:  # slot 0, looked up with the turn's other looks: a hit costs the least this way
            code, payload = await self.batch.look(f"{key}:0".encode(), self._lease_value(owner).encode())
            return await self._outcome(key, 0, code, payload, owner)
        slot, code, payload = await self._run_claim(key, run_id, None if sampled else 0, reuse=reuse, owner=owner)
        return await self._outcome(key, slot, code, payload, owner)

    async def acquire(self, key: str, slot: int, *, owner: str) -> Claim:
        _, code, payload = await self._run_claim(key, "-", slot, reuse=True, owner=owner)
        return await self._outcome(key, slot, code, payload, owner)

    async def _outcome(self, key: str, slot: int, code: int, payload: Any, owner: str) -> Claim:
        if code == 0:
            answer = await self.dicts.decode(key, slot, payload)
            if answer is not None:
                return Claim(slot, answer)
            # A damaged entry: dropped; the caller fills the slot again.
            await self._call(self.redis.hdel(self.k_answers, answer_key(key, slot)))
            return await self.acquire(key, slot, owner=owner)
        if code == 1:
            return Claim(slot, None, leased=True)
        holder = payload.decode() if isinstance(payload, bytes) else str(payload)
        if holder and _pid_dead(holder):
            _, code2, payload2 = await self._run_claim(key, "-", slot, reuse=True, owner=owner, stale=holder)
            if code2 != 2:
                return await self._outcome(key, slot, code2, payload2, owner)
        return Claim(slot, None, leased=False)

    async def finish(self, key: str, slot: int, *, owner: str, answer: StoredAnswer | None,
                     pair: SavedPair | None) -> None:
        member, score, record = self._pair_record(pair) if pair is not None else ("", 0.0, b"")
        blob = b""
        if answer is not None:
            blob = await self.dicts.encode(answer)
        puts = ((self.k_answers, answer_key(key, slot).encode(), blob),) if blob else ()
        await self.batch.run("settle", [self._lease(key, slot), self.k_pairs, f"{self.prefix}free:-:{key}"],
                             [self._lease_value(owner), member, score, ""],
                             (*puts, (self.k_pair, member.encode(), record)) if member else puts)

    async def abandon(self, key: str, slot: int, *, owner: str, run_id: str, sampled: bool) -> None:
        await self.batch.run("settle", [self._lease(key, slot), self.k_pairs, f"{self.prefix}free:{run_id}:{key}"],
                             [self._lease_value(owner), "", 0, slot if sampled else ""])

    async def renew(self, slots: list[tuple[str, int]], *, owner: str) -> None:
        if slots:
            await self.batch.run("renew", [self._lease(k, s) for k, s in slots],
                                 [self._lease_value(owner), self._lease_ms])

    # -- saved pairs -----------------------------------------------------------------------------------------------
    def _pair_record(self, pair: SavedPair) -> tuple[str, float, bytes]:
        """(member, score, record): members name the process too, so proxies of one run never overwrite a pair."""
        return f"{pair.sort_key}/{self._tag}", pair.received_at, pair.record()

    async def save_pair(self, pair: SavedPair) -> None:
        member, score, record = self._pair_record(pair)
        await self.batch.run("pair", [self.k_pairs], [score, member], ((self.k_pair, member.encode(), record),))

    async def count_pairs(self) -> int:
        return int(await self._call(self.redis.zcard(self.k_pairs)))

    async def saved_pairs(self, limit: int | None = None, *, with_responses: bool = True) -> list[SavedPair]:
        """Saved pairs in the order their requests arrived, whichever proxy took them, the first ``limit``."""
        members = await self._call(self.redis.zrange(self.k_pairs, 0, -1 if limit is None else limit - 1))
        if not members:
            return []
        raws = await self._call(self.redis.hmget(self.k_pair, members))
        pairs = []
        for raw in raws:
            try:
                pairs.append(SavedPair(**orjson.loads(raw)))
            except (orjson.JSONDecodeError, TypeError):
                continue
        if with_responses and pairs:
            blobs = await self._call(self.redis.hmget(self.k_answers,
                                                      [answer_key(p.key, p.occurrence) for p in pairs]))
            for pair, blob in zip(pairs, blobs, strict=True):
                answer = await self.dicts.decode(pair.key, pair.occurrence, blob) if blob is not None else None
                if answer is not None:
                    pair.response, pair.events = answer.json(), answer.events
        return pairs

    # -- failures --------------------------------------------------------------------------------------------------
    async def record_failure(self, failure: Failure) -> bool:
        member = f"{failure.sort_key}/{self._tag}"
        kept = await self.batch.run("failure", [self.k_failures, self.k_failure],
                                    [failure.received_at, member, failure.record(), MAX_FAILURES])
        return int(kept) == 1

    async def failures(self, limit: int | None = None) -> list[Failure]:
        members = await self._call(self.redis.zrange(self.k_failures, 0, -1 if limit is None else limit - 1))
        if not members:
            return []
        out = []
        for raw in await self._call(self.redis.hmget(self.k_failure, members)):
            try:
                out.append(Failure(**orjson.loads(raw)))
            except (orjson.JSONDecodeError, TypeError):
                continue
        return out

    # -- answers, raw (for ``evalproxy cache copy``) ---------------------------------------------------------------
    async def get_answers(self, slots: list[tuple[str, int]]) -> list[StoredAnswer | None]:
        if not slots:
            return []
        blobs = await self._call(self.redis.hmget(self.k_answers, [answer_key(k, s) for k, s in slots]))
        decode = self.dicts.decode
        return [await decode(k, s, b) if b is not None else None for (k, s), b in zip(slots, blobs, strict=True)]

    async def count_answers(self) -> int:
        return int(await self._call(self.redis.hlen(self.k_answers)))

    async def raw_answers(self, batch: int = 500) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every stored answer as ("<key>:<slot>", encoded bytes), in batches."""
        cursor = 0
        while True:
            cursor, chunk = await self._call(self.redis.hscan(self.k_answers, cursor, count=batch))
            if chunk:
                yield [(k.decode(), v) for k, v in chunk.items()]
            if cursor == 0:
                return

    async def put_raw_answers(self, items: list[tuple[str, bytes]]) -> None:
        if items:
            await self._call(self.redis.hset(self.k_answers, mapping=dict(items)))

    async def dictionaries(self) -> list[bytes]:
        return await self.dicts.all()

    async def put_dictionaries(self, items: list[bytes]) -> None:
        await self.dicts.put(items)

    # -- whole store -----------------------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.k_answers)
        pipe.zcard(self.k_pairs)
        pipe.zcard(self.k_failures)
        for k in (self.k_answers, self.k_pair, self.k_failure):
            pipe.memory_usage(k)
        answers, pairs, failures, *sizes = await self._call(pipe.execute())
        return {"location": with_prefix(self.location, self.prefix), "backend": "redis", "answers": answers,
                "saved_requests": pairs, "failures": failures, "bytes": sum(s or 0 for s in sizes)}

    async def clear(self) -> int:
        """Delete every key under this store's prefix (answers, pairs, failures, slots, leases)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.k_answers)
        pipe.zcard(self.k_pairs)
        pipe.zcard(self.k_failures)
        n = sum(await self._call(pipe.execute()))
        match, cursor = self.prefix.replace("*", r"\*") + "*", 0
        while True:
            cursor, keys = await self._call(self.redis.scan(cursor, match=match, count=1000))
            if keys:
                await self._call(self.redis.unlink(*keys))
            if cursor == 0:
                self.dicts.table.forget()
                return int(n)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.dicts.aclose()
        await self.batch.drain()  # what callers asked for before the close still reaches the server
        self._closed = True
        await self.batch_connections.aclose()
        await self.redis.aclose()
        await self.pool.disconnect()
