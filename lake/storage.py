"""The S3 data lake: one configuration from the environment, the layout, and folder <-> prefix sync.

The same variables configure every S3 client of the platform, on a laptop (the embedded server,
``hndsr data s3-server``) and in the cluster (MinIO): this module (the ``minio`` SDK), DVC and MLflow
(both through botocore, which reads ``AWS_ENDPOINT_URL`` itself).

==========================  =====================================================================
``AWS_ENDPOINT_URL``        e.g. ``http://127.0.0.1:8333`` or ``http://minio.data:9000``
``AWS_ACCESS_KEY_ID``       access key
``AWS_SECRET_ACCESS_KEY``   secret key
``AWS_DEFAULT_REGION``      optional (default ``us-east-1``)
``HNDSR_LAKE_BUCKET``       the data lake bucket (default ``hndsr``)
==========================  =====================================================================

Layout of the lake bucket: ``raw/`` (source images), ``processed/{train,val,test}/`` plus
``processed/catalog.parquet`` (the output of ``hndsr prepare``), ``models/<version>/``. DVC and MLflow
keep their objects in buckets of their own (``dvc``, ``mlflow``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from hndsr.errors import ConfigError, HNDSRError, InputError

logger = logging.getLogger(__name__)

DEFAULT_LAKE_BUCKET = "hndsr"
DVC_BUCKET = "dvc"
MLFLOW_BUCKET = "mlflow"
_SYNC_STATE = ".s3-sync.json"  # per downloaded folder: object key -> etag, so unchanged objects are skipped


class LakeError(HNDSRError):
    """The S3 server is unreachable, refuses the credentials, or lacks a bucket or object."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    bucket: str = DEFAULT_LAKE_BUCKET

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL", "")
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
        if not endpoint:
            missing.insert(0, "AWS_ENDPOINT_URL")
        if missing:
            raise ConfigError(
                f"S3 is not configured: set {', '.join(missing)} (for a local server run "
                "`hndsr data s3-server` and export the variables it prints)"
            )
        return cls(
            endpoint=endpoint,
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            bucket=env.get("HNDSR_LAKE_BUCKET") or DEFAULT_LAKE_BUCKET,
        )

    def env(self) -> dict[str, str]:
        """The variables that configure every S3 client of the platform for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "HNDSR_LAKE_BUCKET": self.bucket,
        }

    def client(self, *, timeout_s: float | None = None) -> Any:
        """A ``minio.Minio`` client (the ``data`` extra); ``timeout_s``: fail fast, no retries (probes)."""
        try:
            from minio import Minio
        except ImportError as exc:
            raise ConfigError("S3 access needs the minio SDK: pip install 'hndsr[data]'") from exc
        url = urlparse(self.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"AWS_ENDPOINT_URL must look like http://host:port, got {self.endpoint!r}")
        http_client = None
        if timeout_s is not None:
            import urllib3

            http_client = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False
            )
        return Minio(
            url.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=url.scheme == "https",
            region=self.region,
            http_client=http_client,
        )


def lake_uri(settings: S3Settings, *parts: str) -> str:
    """``s3://<lake bucket>/<parts...>``, e.g. ``lake_uri(s, "models", "0.1.0")``."""
    key = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"s3://{settings.bucket}/{key}"


def is_s3_uri(value: str | Path) -> bool:
    return str(value).startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix") (no leading slash)."""
    url = urlparse(uri)
    if url.scheme != "s3" or not url.netloc:
        raise InputError(f"not an S3 URI: {uri!r}; use s3://bucket/prefix")
    return url.netloc, url.path.lstrip("/")


def _call(what: str, settings: S3Settings, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one SDK call; connection and S3 errors become one LakeError line."""
    from minio.error import MinioException, S3Error
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except S3Error as exc:
        hint = ""
        if exc.code == "NoSuchBucket":
            hint = "; create it with `hndsr data lake-init`"
        elif exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            hint = "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        raise LakeError(f"S3 {what} failed at {settings.endpoint}: {exc.code}: {exc.message}{hint}") from exc
    except (MinioException, HTTPError, OSError) as exc:
        raise LakeError(
            f"S3 {what} failed: cannot reach {settings.endpoint} ({type(exc).__name__}); is the server up "
            "and AWS_ENDPOINT_URL right?"
        ) from exc


def ensure_buckets(
    settings: S3Settings, names: tuple[str, ...] | None = None, *, timeout_s: float | None = None
) -> list[str]:
    """Create the lake, DVC and MLflow buckets where missing (DVC and MLflow never create them)."""
    client = settings.client(timeout_s=timeout_s)
    created = []
    for name in names or (settings.bucket, DVC_BUCKET, MLFLOW_BUCKET):
        if not _call("bucket check", settings, client.bucket_exists, name):
            _call("bucket creation", settings, client.make_bucket, name)
            created.append(name)
    return created


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SyncResult:
    transferred: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"{self.transferred} transferred, {self.unchanged} unchanged"


def download_prefix(settings: S3Settings, uri: str, dest: str | Path) -> SyncResult:
    """Mirror every object under ``uri`` into ``dest``; objects whose etag is unchanged are not fetched."""
    bucket, prefix = parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    state_path = dest / _SYNC_STATE
    state: dict[str, str] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    client = settings.client()
    result = SyncResult()
    objects = _call("listing", settings, lambda: list(client.list_objects(bucket, prefix, recursive=True)))
    if not objects:
        raise LakeError(f"no objects under {uri}: upload raw images first (`hndsr data upload DIR {uri}`)")
    seen: dict[str, str] = {}
    for obj in objects:
        if obj.is_dir:
            continue
        rel = obj.object_name[len(prefix) :]
        if not _safe_relative(rel):
            raise LakeError(f"refusing object key {obj.object_name!r}: it would escape {dest}")
        target = dest / rel
        seen[rel] = obj.etag
        if target.is_file() and state.get(rel) == obj.etag and target.stat().st_size == obj.size:
            result.unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        _call("download", settings, client.fget_object, bucket, obj.object_name, str(tmp))
        os.replace(tmp, target)
        result.transferred += 1
    for rel in set(state) - set(seen):  # objects deleted upstream
        (dest / rel).unlink(missing_ok=True)
    if seen != state:
        state_path.write_text(json.dumps(seen, indent=0, sort_keys=True))
    logger.info("downloaded %s -> %s: %s", uri, dest, result)
    return result


def upload_dir(settings: S3Settings, src: str | Path, uri: str) -> SyncResult:
    """Upload every file under ``src`` to ``uri``; objects with the same MD5 (the etag) are skipped."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{src} is not a folder: pass the folder to upload")
    bucket, prefix = parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = settings.client()
    if not _call("bucket check", settings, client.bucket_exists, bucket):
        raise LakeError(
            f"bucket {bucket!r} does not exist at {settings.endpoint}; run `hndsr data lake-init`"
        )
    existing = {
        o.object_name: (o.etag or "").strip('"')
        for o in _call("listing", settings, lambda: list(client.list_objects(bucket, prefix, recursive=True)))
    }
    result = SyncResult()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # local bookkeeping (sync/prepare state, temporary files)
        key = prefix + rel
        if existing.get(key) == _md5(path):
            result.unchanged += 1
            continue
        # Files under 64 MiB go up in one part, so the etag stays the MD5 compared above.
        _call("upload", settings, client.fput_object, bucket, key, str(path), part_size=64 << 20)
        result.transferred += 1
    logger.info("uploaded %s -> %s: %s", src, uri, result)
    return result


def _safe_relative(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts
