"""Job records and the reliable queue, in Redis.

Keys (``ns`` = :attr:`JobConfig.namespace`, one Redis instance; the scripts build keys from ``ns``,
so this is not for Redis Cluster)::

    ns:queue        list   job ids ready to run (LPUSH in, BLMOVE out from the right: FIFO)
    ns:processing   list   job ids a worker has taken (BLMOVE moves them here atomically)
    ns:leases       zset   job id -> visibility deadline (Redis clock); heartbeats push it forward
    ns:delayed      zset   job id -> time of its next attempt (retry backoff)
    ns:dead         list   dead-lettered job ids (newest left); the record keeps the reason
    ns:job:<id>     hash   the record: status, attempts, params, input/result refs, progress, error
    ns:input:<id>   string an input stored in Redis
    ns:idem:<hash>  string idempotency key (per client) -> job id
    ns:completed    int    jobs completed (all time)

Every state change is one Lua script, so a crash between two commands cannot lose or duplicate a job.
A claim writes a fresh random *token* into the record; heartbeats, completion and failure only act
while the token is still theirs. When a lease expires (the worker died or stalled past the visibility
timeout), :meth:`JobStore.reap` counts it as a failed attempt and requeues it (with backoff) or
dead-letters it, and clears the token — a late result of the old attempt is then refused, so a job
completes at most once. A job taken by BLMOVE whose worker died before it could write its lease gets
one from the reaper (deadline = now + visibility timeout), so it is recovered the same way.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lake.storage import S3Settings
from serving.jobs import scripts
from serving.jobs.blobs import REDIS_REF, BlobStore

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class JobConfig:
    redis_url: str
    namespace: str = "hndsr:jobs"
    visibility_timeout_s: float = 120.0  # a worker heartbeats every third of it
    max_attempts: int = 3
    backoff_s: float = 5.0  # before attempt n + 1: backoff_s * 2 ** (n - 1), at most backoff_max_s
    backoff_max_s: float = 300.0
    result_ttl_s: float = 24 * 3600.0
    dead_ttl_s: float = 7 * 24 * 3600.0  # dead-lettered records (and their inputs) stay for inspection
    pending_ttl_s: float = 7 * 24 * 3600.0  # a job nobody ran by then is dropped
    inline_max_bytes: int = 4 * 2**20  # larger inputs and results go to S3 when s3_prefix is set
    s3_prefix: str | None = None  # s3://bucket/prefix; credentials from AWS_* (lake.storage)


@dataclass(frozen=True)
class Submitted:
    id: str
    outcome: str  # created | duplicate (same idempotency key and request)


@dataclass
class Lease:
    """A claimed job: valid while ``token`` is the record's."""

    id: str
    token: str
    attempt: int
    record: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return dict(json.loads(self.record.get("params", "{}")))


class IdempotencyConflict(Exception):
    """The idempotency key names an earlier job with a different request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def new_job_id() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits: unguessable


def fingerprint(data: bytes, params: dict[str, Any]) -> str:
    h = hashlib.sha256(data)
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


class JobStore:
    """All job operations; thread-safe (redis-py pools connections)."""

    def __init__(
        self, config: JobConfig, *, redis: Any = None, s3_settings: S3Settings | None = None
    ) -> None:
        """``s3_settings``: the S3 endpoint and keys (default: from AWS_*, as everywhere, lake.storage)."""
        import redis as redis_lib

        self.config = config
        self.ns = config.namespace
        # BLMOVE blocks up to a few seconds: the socket timeout must outlast it.
        self.redis = redis or redis_lib.Redis.from_url(
            config.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0, health_check_interval=30
        )
        self.blobs = BlobStore(
            self.redis,
            self.ns,
            inline_max_bytes=config.inline_max_bytes,
            s3_prefix=config.s3_prefix,
            s3_settings=s3_settings,
        )
        self._submit = self.redis.register_script(scripts.SUBMIT)
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)
        self._complete = self.redis.register_script(scripts.COMPLETE)
        self._fail = self.redis.register_script(scripts.FAIL)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._reap = self.redis.register_script(scripts.REAP)

    def key(self, *parts: str) -> str:
        return ":".join([self.ns, *parts])

    def now(self) -> float:
        """The Redis server's clock: every deadline is on it, whatever the clocks of the pods."""
        sec, usec = self.redis.time()
        return float(sec) + float(usec) / 1e6

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # ------------------------------------------------------------------------------ producers

    def submit(
        self,
        data: bytes,
        params: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        client: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Submitted:
        """Store the input (Redis or S3 by size) and queue the job. A repeated idempotency key (per
        ``client``) returns the first job; with a different request it raises IdempotencyConflict."""
        c = self.config
        job_id = new_job_id()
        fp = fingerprint(data, params)
        idem = ""
        if idempotency_key:
            idem = hashlib.sha256(f"{client}\0{idempotency_key}".encode()).hexdigest()
            existing = self.redis.get(self.key("idem", idem))
            if existing is not None:  # fast path: no upload for a replay
                found = self._existing(_text(existing), fp)
                if found is not None:
                    return found
        inline = not self.blobs.goes_to_s3(len(data))
        input_ref = REDIS_REF + self.key("input", job_id)
        if not inline:
            input_ref = self.blobs.put_s3(self.blobs.s3_uri(job_id, "input"), data)
        fields: dict[str, Any] = {
            "params": json.dumps(params, sort_keys=True),
            "input": input_ref,
            "input_bytes": len(data),
            "max_attempts": c.max_attempts,
            **(meta or {}),
        }
        argv: list[Any] = [self.ns, job_id, idem, fp, int(c.pending_ttl_s), "1" if inline else "0"]
        argv.append(data if inline else b"")
        for k, v in fields.items():
            argv += [k, v if isinstance(v, (bytes, str, int, float)) else json.dumps(v)]
        out_id, outcome = (_text(v) for v in self._submit(args=argv))
        if outcome == "conflict":
            raise IdempotencyConflict(out_id)
        if out_id != job_id and not inline:  # lost a race with the same key: drop our upload
            self.blobs.delete(input_ref)
        if not inline and outcome == "created":
            self.blobs.expire_s3(input_ref, self.now() + c.pending_ttl_s)
        return Submitted(out_id, outcome)

    def _existing(self, job_id: str, fp: str) -> Submitted | None:
        stored = self.redis.hget(self.key("job", job_id), "fingerprint")
        if stored is None:
            return None  # that job expired: the key is free again
        if _text(stored) != fp:
            raise IdempotencyConflict(job_id)
        return Submitted(job_id, "duplicate")

    # ------------------------------------------------------------------------------ workers

    def claim(self, worker: str, *, block_s: float = 2.0) -> Lease | None:
        """Wait up to ``block_s`` for a job; BLMOVE takes it into the processing list atomically."""
        # Raw command: redis-py types the timeout as int; Redis >= 6 takes fractions of a second.
        raw = self.redis.execute_command(
            "BLMOVE", self.key("queue"), self.key("processing"), "RIGHT", "LEFT", block_s
        )
        if raw is None:
            return None
        job_id = _text(raw)
        token = secrets.token_hex(16)
        argv: list[Any] = [self.ns, job_id, token, worker, self.config.visibility_timeout_s]
        attempt = self._claim(args=argv)
        if not attempt:
            return None  # a stale entry (the job finished or expired): dropped by the script
        record = {_text(k): _text(v) for k, v in self.redis.hgetall(self.key("job", job_id)).items()}
        return Lease(job_id, token, int(attempt), record)

    def heartbeat(self, lease: Lease, tiles_done: int, tiles_total: int) -> bool:
        args: list[Any] = [
            self.ns,
            lease.id,
            lease.token,
            self.config.visibility_timeout_s,
            tiles_done,
            tiles_total,
        ]
        return bool(self._heartbeat(args=args))

    def input_of(self, lease: Lease) -> bytes:
        return self.blobs.get(lease.record["input"])

    def store_result(self, lease: Lease, data: bytes | Path, ext: str, *, name: str = "result") -> str:
        """The result under a name of this attempt (a stale attempt never overwrites a committed one).
        ``data`` may be a file (a streamed result): it goes to S3 from disk when large enough. ``name``
        tells a job's other outputs apart (``uncertainty``: the second PNG of samples >= 2)."""
        c = self.config
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if self.blobs.goes_to_s3(size):
            uri = self.blobs.s3_uri(lease.id, f"{name}-{lease.token[:8]}.{ext}")
            return self.blobs.put_s3(uri, data, expires_at=self.now() + c.result_ttl_s)
        if isinstance(data, Path):
            data = data.read_bytes()
        key = self.key(name, lease.id, lease.token[:8])
        self.redis.set(key, data, ex=int(c.result_ttl_s))
        return REDIS_REF + key

    def complete(self, lease: Lease, result_ref: str, meta: dict[str, Any]) -> bool:
        """Commit the result; False (and the result deleted) when the lease was lost meanwhile."""
        argv: list[Any] = [
            self.ns,
            lease.id,
            lease.token,
            int(self.config.result_ttl_s),
            "result",
            result_ref,
        ]
        for k, v in meta.items():
            argv += [k, v if isinstance(v, (str, int, float)) else json.dumps(v)]
        if self._complete(args=argv):
            input_ref = lease.record.get("input", "")
            if input_ref.startswith("s3://"):
                self.blobs.expire_s3(input_ref, 0.0)  # swept at once
            return True
        self.blobs.delete(result_ref)
        return False

    def fail(self, lease: Lease, reason: str, *, kind: str, permanent: bool) -> str:
        """A failed attempt -> 'retry' (after backoff), 'dead' (dead-letter queue) or 'stale'."""
        c = self.config
        argv: list[Any] = [self.ns, lease.id, lease.token, reason[:2000], kind, "1" if permanent else "0"]
        argv += [c.backoff_s, c.backoff_max_s, int(c.dead_ttl_s)]
        return _text(self._fail(args=argv))

    def release(self, lease: Lease) -> bool:
        """Hand a job back untouched (a worker stopping); it is the next one taken."""
        return bool(self._release(args=[self.ns, lease.id, lease.token]))

    def reap(self, limit: int = 100) -> tuple[int, int, int]:
        """Expired leases -> retry or dead letter; due retries -> queue. (requeued, dead, promoted)."""
        c = self.config
        argv: list[Any] = [
            self.ns,
            c.visibility_timeout_s,
            c.backoff_s,
            c.backoff_max_s,
            int(c.dead_ttl_s),
            limit,
        ]
        requeued, dead, promoted = self._reap(args=argv)
        return int(requeued), int(dead), int(promoted)

    # ------------------------------------------------------------------------------ readers

    def get(self, job_id: str) -> dict[str, str] | None:
        raw = self.redis.hgetall(self.key("job", job_id))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def counts(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.key("queue"))
        pipe.zcard(self.key("delayed"))
        pipe.llen(self.key("processing"))
        pipe.llen(self.key("dead"))
        pipe.get(self.key("completed"))
        queued, delayed, processing, dead, completed = pipe.execute()
        return {
            "queued": int(queued),
            "delayed": int(delayed),
            "processing": int(processing),
            "dead": int(dead),
            "completed": int(completed or 0),
        }

    def dead_letters(self, count: int = 100) -> list[str]:
        return [_text(v) for v in self.redis.lrange(self.key("dead"), 0, count - 1)]

    def wait(self, job_id: str, *, timeout_s: float, poll_s: float = 0.2) -> dict[str, str] | None:
        """Poll until the job is done or failed (tests, benchmarks, the client)."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(job_id)
            if record is None or record.get("status") in (DONE, FAILED) or time.monotonic() > deadline:
                return record
            time.sleep(poll_s)
