"""Where the predictor's checkpoint comes from: a storage URI resolved to a local checkpoint directory.

=============================== ===========================================================================
URI                             source
=============================== ===========================================================================
``release``                     the checkpoint shipped in the package (``hndsr/release``)
``/path/dir``, ``file:///dir``  a local checkpoint directory (``model.safetensors`` + ``config.json``)
``s3://bucket/prefix``          every object under the prefix, through the ``minio`` SDK; endpoint and
                                keys from ``AWS_ENDPOINT_URL``/``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
                                or ``HNDSR_S3_ENDPOINT``/``HNDSR_S3_ACCESS_KEY``/``HNDSR_S3_SECRET_KEY``
``models:/name@alias``          an MLflow registry alias (or ``models:/name/3``), mlflow imported lazily;
                                the checkpoint directory is found inside the downloaded artifacts
=============================== ===========================================================================

Resolution only fetches files; :func:`hndsr.checkpoint.load_checkpoint` then verifies the weights'
sha256 against ``config.json``. Every failure is a :class:`CheckpointError` that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from hndsr.checkpoint import CONFIG_FILE, FORMAT, release_checkpoint_dir
from hndsr.errors import CheckpointError

logger = logging.getLogger(__name__)


def resolve_storage_uri(uri: str, *, cache_dir: str | Path | None = None) -> Path:
    """A local checkpoint directory for ``uri`` (downloading it first for s3:// and models:/)."""
    uri = uri.strip()
    if not uri:
        raise CheckpointError(
            "empty storage URI: pass a checkpoint directory, s3://bucket/prefix or models:/name@alias"
        )
    if uri == "release":
        return release_checkpoint_dir()
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "hndsr-model-cache"
    if uri.startswith("s3://"):
        return download_s3(uri, cache / "s3")
    if uri.startswith("models:/"):
        return download_mlflow(uri, cache / "mlflow")
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise CheckpointError(
            f"unsupported storage URI {uri!r}: use a local directory, file://, s3://bucket/prefix, "
            "models:/name@alias or 'release'"
        )
    return Path(uri)


def s3_settings(env: Mapping[str, str] | None = None) -> tuple[str, str, str, str | None]:
    """(endpoint URL, access key, secret key, region) from the environment."""
    env = os.environ if env is None else env
    endpoint = env.get("HNDSR_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL") or ""
    access = env.get("HNDSR_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID") or ""
    secret = env.get("HNDSR_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY") or ""
    missing = [
        name
        for name, value in (("endpoint", endpoint), ("access key", access), ("secret key", secret))
        if not value
    ]
    if missing:
        raise CheckpointError(
            f"s3:// storage needs {', '.join(missing)}: set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or HNDSR_S3_ENDPOINT, HNDSR_S3_ACCESS_KEY, HNDSR_S3_SECRET_KEY)"
        )
    region = env.get("HNDSR_S3_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
    return endpoint, access, secret, region


def download_s3(uri: str, cache: Path, env: Mapping[str, str] | None = None) -> Path:
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise CheckpointError(f"s3 URI {uri!r} has no bucket: use s3://bucket/prefix")
    endpoint, access, secret, region = s3_settings(env)
    ep = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    try:
        from minio import Minio
        from minio.error import MinioException
    except ImportError as exc:  # pragma: no cover - the serve extra installs it
        raise CheckpointError("s3:// storage needs the minio package: pip install minio") from exc
    client = Minio(
        ep.netloc, access_key=access, secret_key=secret, secure=ep.scheme == "https", region=region
    )
    target = cache / bucket / (prefix or "_root")
    target.mkdir(parents=True, exist_ok=True)
    listing_prefix = f"{prefix}/" if prefix else ""
    count = 0
    try:
        for obj in client.list_objects(bucket, prefix=listing_prefix, recursive=True):
            name = obj.object_name or ""
            rel = name[len(listing_prefix) :]
            if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                continue
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(bucket, name, str(dest))
            count += 1
    except (MinioException, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot download {uri} from {endpoint}: {exc}; check the endpoint, the keys and that the "
            "bucket exists"
        ) from exc
    if count == 0:
        raise CheckpointError(
            f"no objects under {uri} on {endpoint}: upload the checkpoint directory (model.safetensors + "
            "config.json) there, or fix the prefix"
        )
    logger.info("downloaded %d objects from %s to %s", count, uri, target)
    return find_checkpoint_dir(target, uri)


def download_mlflow(uri: str, cache: Path) -> Path:
    try:
        import mlflow.artifacts
    except ImportError as exc:
        raise CheckpointError(
            f"{uri} is an MLflow registry URI but mlflow is not installed: pip install 'hndsr[pipeline]', "
            "or pass a checkpoint directory / s3:// URI"
        ) from exc
    cache.mkdir(parents=True, exist_ok=True)
    dst = Path(tempfile.mkdtemp(prefix="model-", dir=cache))
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    except Exception as exc:  # mlflow raises several unrelated types (MlflowException, OSError, HTTP errors)
        raise CheckpointError(
            f"cannot download {uri} from the MLflow registry ({type(exc).__name__}: {exc}); check "
            "MLFLOW_TRACKING_URI and that the alias or version exists"
        ) from exc
    return find_checkpoint_dir(Path(local), uri)


def find_checkpoint_dir(root: Path, uri: str) -> Path:
    """``root`` itself or the one directory below it that holds an HNDSR ``config.json``."""
    candidates = [root] if (root / CONFIG_FILE).is_file() else []
    candidates += sorted(p.parent for p in root.rglob(CONFIG_FILE) if p.parent != root)
    for directory in candidates:
        try:
            if json.loads((directory / CONFIG_FILE).read_text()).get("format") == FORMAT:
                return directory
        except (OSError, json.JSONDecodeError):
            continue
    raise CheckpointError(
        f"{uri} holds no HNDSR checkpoint (a directory with model.safetensors and a {CONFIG_FILE} of "
        f"format {FORMAT!r}): register the checkpoint directory written by `hndsr train`"
    )
