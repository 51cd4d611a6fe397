"""Where job inputs and results live: Redis below a size threshold, S3 above it (when configured).

A reference names the place: ``redis:<key>`` or ``s3://bucket/key``. Redis values carry their TTL
themselves; S3 objects get an expiry time in a sorted set (``<ns>:s3_expiry``) that
:meth:`BlobStore.sweep_expired` (run by every worker's maintenance loop) acts on, so nothing depends on
bucket lifecycle rules the S3 server may not have.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from hndsr.errors import HNDSRError
from lake.storage import S3Settings, parse_s3_uri

logger = logging.getLogger(__name__)

REDIS_REF = "redis:"


class BlobError(HNDSRError):
    """An input or result could not be stored or read (S3 down, object gone, Redis key expired)."""


class BlobStore:
    def __init__(
        self,
        redis: Any,
        namespace: str,
        *,
        inline_max_bytes: int,
        s3_prefix: str | None = None,
        s3_settings: S3Settings | None = None,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.inline_max_bytes = inline_max_bytes
        self.s3_prefix = s3_prefix.rstrip("/") if s3_prefix else None
        self._s3: Any = None
        self._s3_settings = s3_settings
        if self.s3_prefix:  # misconfiguration fails at start-up, not on the first large job
            parse_s3_uri(self.s3_prefix)
            self._s3_settings = s3_settings or S3Settings.from_env()

    @property
    def expiry_key(self) -> str:
        return f"{self.namespace}:s3_expiry"

    def goes_to_s3(self, size: int) -> bool:
        return self.s3_prefix is not None and size > self.inline_max_bytes

    def s3_uri(self, *parts: str) -> str:
        assert self.s3_prefix is not None
        return "/".join([self.s3_prefix, *parts])

    # ------------------------------------------------------------------------------ S3

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = (self._s3_settings or S3Settings.from_env()).client()
        return self._s3

    def put_s3(self, uri: str, data: bytes | Path, *, expires_at: float | None = None) -> str:
        """Upload bytes, or a file streamed from disk (multipart: never read whole into memory)."""
        bucket, key = parse_s3_uri(uri)
        try:
            if isinstance(data, Path):
                with open(data, "rb") as fh:
                    self._client().put_object(
                        bucket, key, fh, data.stat().st_size, part_size=64 * 1024 * 1024
                    )
            else:
                self._client().put_object(bucket, key, io.BytesIO(data), len(data))
        except Exception as exc:  # minio raises S3Error, urllib3 and OS errors
            raise BlobError(f"S3 upload of {uri} failed ({type(exc).__name__}: {exc})") from exc
        if expires_at is not None:
            self.redis.zadd(self.expiry_key, {uri: expires_at})
        return uri

    def expire_s3(self, uri: str, expires_at: float) -> None:
        self.redis.zadd(self.expiry_key, {uri: expires_at})

    def presigned_url(self, uri: str, ttl_s: float) -> str:
        bucket, key = parse_s3_uri(uri)
        seconds = int(max(60, min(ttl_s, 7 * 86400)))  # S3's presign range
        return str(self._client().presigned_get_object(bucket, key, expires=timedelta(seconds=seconds)))

    # ------------------------------------------------------------------------------ both

    def get(self, ref: str) -> bytes:
        if ref.startswith(REDIS_REF):
            data = self.redis.get(ref.removeprefix(REDIS_REF))
            if data is None:
                raise BlobError(f"{ref} is gone (expired or deleted)")
            return bytes(data)
        bucket, key = parse_s3_uri(ref)
        try:
            response = self._client().get_object(bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()
        except Exception as exc:
            raise BlobError(f"S3 download of {ref} failed ({type(exc).__name__}: {exc})") from exc

    def delete(self, ref: str) -> None:
        if ref.startswith(REDIS_REF):
            self.redis.delete(ref.removeprefix(REDIS_REF))
            return
        bucket, key = parse_s3_uri(ref)
        try:
            self._client().remove_object(bucket, key)
        except Exception as exc:
            logger.warning("could not delete %s (%s); it stays until swept again", ref, exc)
            raise BlobError(f"S3 delete of {ref} failed: {exc}") from exc
        self.redis.zrem(self.expiry_key, ref)

    def sweep_expired(self, limit: int = 100) -> int:
        """Delete S3 objects whose time has passed; returns how many went."""
        sec, usec = self.redis.time()  # the clock every deadline is set on
        due = self.redis.zrangebyscore(self.expiry_key, "-inf", sec + usec / 1e6, start=0, num=limit)
        removed = 0
        for raw in due:
            uri = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                self.delete(uri)
                removed += 1
            except BlobError:
                continue
        return removed
