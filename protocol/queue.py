"""Groups over Redis Streams: producer with backpressure, consumers with reclaim and dead letters.

Each stream has exactly one consumer group. A consumer removes an entry (XACK + XDEL) once its
output is durably written downstream, so the stream length *is* the backlog: unread entries
plus entries read but not yet acknowledged. That makes the length bound meaningful without
ever trimming data nobody has read.

Exactly-once hand-off between two streams on the same server is `forward`: one Lua script that,
for each entry still owned by this consumer, writes the output and acknowledges the input. A
consumer that died (or stalled past `claim_idle_ms`) loses ownership to whoever reclaims the
entry, so its late writes are refused rather than duplicated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from protocol.auth import read_secret
from protocol.codec import DecodeError, decode_group, encode_group
from protocol.config import ConfigError
from protocol.config.redis import RedisConfig
from protocol.schema import Group
from protocol.streams import dead_letter

FIELD = b"d"
"""The one field of every entry: the encoded group."""

_FORWARD = """
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 then
    if KEYS[2] then redis.call('XADD', KEYS[2], '*', 'd', ARGV[i + 1]) end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
"""


class QueueFull(TimeoutError):
    """The backlog stayed above its bound for the whole wait."""


PASSWORD_ENV = "RINGRL_REDIS_PASSWORD"

RETRY_CAP_S = 5.0
"""Longest wait between two attempts to reach Redis."""


def connect(url: str, retry_forever: bool = True, username: str | None = None,
            password: str | None = None) -> redis.Redis:
    """A client for the queue: binary-safe (payloads are bytes), with a health check.

    Every command is retried on a lost connection with exponential backoff capped at RETRY_CAP_S,
    forever: a Redis restart (AOF keeps the streams) pauses the parts, it does not end them. The
    timeouts make a dead link an error to retry instead of a hang. A retried write may have landed
    the first time (XADD): groups are deduplicated by id downstream, so that is at-least-once, not
    a loss. `retry_forever=False` is for probes that must answer at once.
    """
    retry = Retry(ExponentialBackoff(cap=RETRY_CAP_S, base=0.05), -1 if retry_forever else 0)
    creds = {k: v for k, v in (("username", username), ("password", password)) if v}
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30, **creds,
                                socket_connect_timeout=5, socket_timeout=15, socket_keepalive=True,
                                retry=retry, retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError])


def queue_client(cfg: RedisConfig, retry_forever: bool = True) -> redis.Redis:
    """`connect` to the run's Redis as `cfg` says, logged in with the part's own ACL user.

    A refused login is not retried like an outage (redis-py counts it as a lost connection): it is
    a mistake in the deployment, said at once as a ConfigError.
    """
    if not cfg.url:
        raise ConfigError("redis.url: no Redis configured")
    password = read_secret(PASSWORD_ENV, cfg.password_file, "redis.password_file")
    client = connect(cfg.url, retry_forever, username=cfg.username or None, password=password)
    try:
        redis.Redis(connection_pool=_no_retry_pool(client)).ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"redis.username/password_file: Redis refused the login ({exc})") from None
    except redis.ResponseError as exc:
        raise ConfigError(f"redis.username: Redis refused PING ({exc})") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        pass  # not up yet: every command waits for it (retry with backoff)
    return client


def _no_retry_pool(client: redis.Redis) -> redis.ConnectionPool:
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0), "socket_timeout": 2,
              "socket_connect_timeout": 2}
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def redis_probe(client: redis.Redis) -> Callable[[], bool]:
    """A readiness probe for `client`'s server: one PING without retries, False while Redis is away.

    It has a pool of its own, made once (probes run every few seconds): the client's connections
    carry its retry-forever policy, which would make a probe hang through an outage.
    """
    probe = redis.Redis(connection_pool=_no_retry_pool(client))

    def ping() -> bool:
        try:
            return bool(probe.ping())
        except (redis.RedisError, OSError):
            return False

    return ping


def pending_count(client: redis.Redis, stream: str, group: str) -> int:
    """Entries of `stream` read by `group` and not yet acknowledged (0 before the group exists)."""
    try:
        return int(client.xpending(stream, group)["pending"])
    except redis.ResponseError as exc:
        if "NOGROUP" in str(exc):
            return 0
        raise


class Backpressure:
    """Waits while the summed length of some streams is at or above `max_backlog`.

    `custody` (stream, group): entries that group has read but holds unacknowledged until they are
    durable downstream (the learner acks after a checkpoint) are not backlog: they are not waiting
    for anyone, and counting them would let the holder's checkpoint interval stall the producers.
    """

    def __init__(self, client: redis.Redis, streams: Sequence[str], max_backlog: int,
                 poll_s: float = 0.05, custody: tuple[str, str] | None = None) -> None:
        if max_backlog <= 0:
            raise ValueError("max_backlog must be positive")
        self.client, self.streams, self.max_backlog, self.poll_s = client, list(streams), max_backlog, poll_s
        self.custody = custody

    def backlog(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for s in self.streams:
            pipe.xlen(s)
        held = pending_count(self.client, *self.custody) if self.custody else 0
        return int(sum(pipe.execute())) - held

    def wait(self, needed: int = 1, timeout: float | None = None,
             stop: Callable[[], bool] | None = None) -> float:
        """Block until `needed` more entries fit; return the seconds spent waiting."""
        start = time.monotonic()
        while self.backlog() + needed > self.max_backlog:
            if stop is not None and stop():
                break
            if timeout is not None and time.monotonic() - start >= timeout:
                raise QueueFull(f"backlog of {self.streams} above {self.max_backlog} for {timeout:.1f}s")
            time.sleep(self.poll_s)
        return time.monotonic() - start


class StreamProducer:
    """Appends groups to a stream, waiting while its backlog is at `max_len`.

    The bound holds up to one batch per concurrent producer (the check and the append are not
    one atomic step, which would serialise producers for no real gain).
    """

    def __init__(self, client: redis.Redis, stream: str, max_len: int = 10_000,
                 audit_set: str | None = None) -> None:
        """`audit_set`: also add each group's id to this set, in the same transaction as the append
        (audited runs: every group ever written, to account for it by id at the end)."""
        self.client, self.stream, self.audit_set = client, stream, audit_set
        self.backpressure = Backpressure(client, [stream], max_len)

    def produce(self, groups: Sequence[Group], timeout: float | None = None) -> list[bytes]:
        return self.produce_raw([encode_group(g) for g in groups], timeout=timeout)

    def produce_raw(self, payloads: Sequence[bytes], timeout: float | None = None,
                    stop: Callable[[], bool] | None = None, ids: Sequence[str] = ()) -> list[bytes]:
        """Wait for room, then append; once `stop()` is true it appends without waiting (a shutdown
        writing out what it must not lose). `ids`: the groups' ids, for the audit set."""
        if not payloads:
            return []
        self.backpressure.wait(needed=min(len(payloads), self.backpressure.max_backlog),
                               timeout=timeout, stop=stop)
        pipe = self.client.pipeline(transaction=self.audit_set is not None)
        for p in payloads:
            pipe.xadd(self.stream, {FIELD: p})
        if self.audit_set is not None and ids:
            pipe.sadd(self.audit_set, *ids)
        return pipe.execute()[:len(payloads)]


@dataclass
class Entry:
    id: bytes
    group: Group
    reclaimed: bool = False


class StreamConsumer:
    """One member of a stream's consumer group."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str,
                 claim_idle_ms: int = 30_000, reclaim_every_s: float = 1.0) -> None:
        self.client, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.claim_idle_ms, self.reclaim_every_s = claim_idle_ms, reclaim_every_s
        self.dead_letter_stream = dead_letter(stream)
        self._claim_cursor = b"0-0"
        self._recover_cursor = b"0"
        self._last_reclaim = 0.0
        self._forward = client.register_script(_FORWARD)
        self.dead_lettered = 0
        self.reclaimed = 0
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int = 64, block_ms: int = 1000) -> list[Entry]:
        """Up to `count` entries: first any reclaimed from dead consumers, then new ones."""
        try:
            return self._read(count, block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis came back without the stream (restarted without persistence): start it again.
            self.ensure_group()
            return self._read(count, block_ms)

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        out: list[Entry] = []
        now = time.monotonic()
        if now - self._last_reclaim >= self.reclaim_every_s:
            self._last_reclaim = now
            out.extend(self._reclaim(count))
        if len(out) < count:
            resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                          count=count - len(out), block=None if out else block_ms)
            for _, rows in resp or []:
                out.extend(self._decode(rows, reclaimed=False))
        return out

    def recover(self, count: int) -> list[Entry]:
        """The next entries this consumer name read earlier and never acked (a restart after a
        crash), oldest first; [] once all have been returned."""
        resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: self._recover_cursor},
                                      count=count)
        found = [row for _, rows in resp or [] for row in rows]
        if found:
            self._recover_cursor = found[-1][0]
        entries = self._decode([(eid, f) for eid, f in found if f], reclaimed=True)
        self.reclaimed += len(entries)
        return entries

    def _reclaim(self, count: int) -> list[Entry]:
        cursor, rows, deleted = self._xautoclaim(count)
        self._claim_cursor = cursor
        if deleted:  # pending entries whose data is gone: nothing to process, release them
            self.client.xack(self.stream, self.group, *deleted)
        entries = self._decode(rows, reclaimed=True)
        self.reclaimed += len(entries)
        return entries

    def _xautoclaim(self, count: int) -> tuple[bytes, list, list]:
        resp = self.client.execute_command("XAUTOCLAIM", self.stream, self.group, self.consumer,
                                           self.claim_idle_ms, self._claim_cursor, "COUNT", count)
        cursor, rows = resp[0], resp[1]
        deleted = resp[2] if len(resp) > 2 else []
        return cursor, [(eid, _pairs(f)) for eid, f in rows if f is not None], list(deleted)

    def _decode(self, rows: list, reclaimed: bool) -> list[Entry]:
        entries = []
        for eid, fields in rows:
            raw = fields.get(FIELD)
            try:
                if raw is None:
                    raise DecodeError(f"entry has no {FIELD.decode()!r} field")
                entries.append(Entry(eid, decode_group(raw), reclaimed))
            except DecodeError as exc:
                self._dead_letter(eid, raw or b"", str(exc))
        return entries

    def _dead_letter(self, eid: bytes, raw: bytes, reason: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, {b"reason": reason, b"source_id": eid, FIELD: raw})
        pipe.xack(self.stream, self.group, eid)
        pipe.xdel(self.stream, eid)
        pipe.execute()
        self.dead_lettered += 1

    def forward(self, ids: Sequence[bytes], dest: str, payloads: Sequence[bytes]) -> int:
        """Atomically write payloads[i] to `dest` and ack ids[i], for entries still ours.

        Returns how many were forwarded; the others were reclaimed by another consumer.
        """
        if len(ids) != len(payloads):
            raise ValueError("ids and payloads differ in length")
        if not ids:
            return 0
        argv: list[bytes | str] = [self.group, self.consumer]
        for eid, p in zip(ids, payloads):
            argv += [eid, p]
        return int(self._forward(keys=[self.stream, dest], args=argv))

    def ack(self, ids: Sequence[bytes]) -> int:
        """Acknowledge (and delete) entries still owned by this consumer; returns how many."""
        if not ids:
            return 0
        argv: list[bytes | str] = [self.group, self.consumer]
        for eid in ids:
            argv += [eid, b""]
        # One key only: an ACL'd user may touch the run's keys alone, and "" is not one of them.
        return int(self._forward(keys=[self.stream], args=argv))

    def pending(self) -> int:
        """Entries read by some consumer of the group and not yet acknowledged."""
        return pending_count(self.client, self.stream, self.group)


def _pairs(fields: object) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    it = iter(fields)  # RESP2 returns a flat [k, v, k, v] list from raw commands
    return dict(zip(it, it))
