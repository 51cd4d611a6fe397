"""``hndsr serve worker``: the asynchronous-job worker (``serving.worker``), imported only when it runs —
the core never imports redis or kserve."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

DEFAULT_NAMESPACE = "hndsr:jobs"


def job_config(
    redis_url: str,
    *,
    s3_prefix: str | None = None,
    inline_max_mb: float | None = None,
    **overrides: Any,
) -> Any:
    """A ``serving.jobs.JobConfig``; unset options keep its defaults."""
    from serving.jobs.store import JobConfig

    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise typer.BadParameter(f"--redis-url must look like redis://host:6379/0, got {redis_url!r}")
    if s3_prefix and not s3_prefix.startswith("s3://"):
        raise typer.BadParameter(f"--s3-prefix must look like s3://bucket/prefix, got {s3_prefix!r}")
    values = {k: v for k, v in overrides.items() if v is not None}
    if inline_max_mb is not None:
        values["inline_max_bytes"] = int(inline_max_mb * 2**20)
    return JobConfig(redis_url=redis_url, s3_prefix=s3_prefix or None, **values)


def register(serve_app: typer.Typer, *, friendly_errors: Callable[[Any], Any]) -> None:
    @serve_app.command("worker")
    @friendly_errors
    def serve_worker(
        redis_url: Annotated[
            str, typer.Option(envvar="HNDSR_REDIS_URL", help="Redis holding the queue: redis://host:6379/0.")
        ],
        s3_prefix: Annotated[
            str | None,
            typer.Option(
                envvar="HNDSR_JOBS_S3_PREFIX",
                help="s3://bucket/prefix for inputs/results over --inline-max-mb (keys from AWS_*).",
            ),
        ] = None,
        inline_max_mb: Annotated[
            float, typer.Option(help="Larger results go to S3 (with --s3-prefix).")
        ] = 4.0,
        storage_uri: Annotated[
            str, typer.Option(help="release | DIR | s3://bucket/prefix | models:/hndsr@champion")
        ] = "release",
        device: Annotated[str | None, typer.Option(help="cpu, cuda (default: cuda if present).")] = None,
        tile: Annotated[int, typer.Option(help="Tile size, output px (memory bound).")] = 1024,
        max_output_mp: Annotated[
            float, typer.Option(help="Refuse larger PNG outputs (rendered in memory: ~50 bytes per pixel).")
        ] = 400.0,
        max_stream_output_mp: Annotated[
            float,
            typer.Option(
                help="Refuse larger GeoTIFF outputs (streamed: the decoded input + 4 bytes per output "
                "pixel of diffusion noise + a tile-high band)."
            ),
        ] = 2000.0,
        scratch_dir: Annotated[
            str | None, typer.Option(help="Where streamed GeoTIFF results are written before upload.")
        ] = None,
        http_port: Annotated[int, typer.Option(help="Port of /metrics, /health and /live.")] = 8082,
        http_host: Annotated[str, typer.Option(help="Address of that port.")] = "0.0.0.0",
        namespace: Annotated[
            str, typer.Option(help="Redis key prefix (the transformer's too).")
        ] = DEFAULT_NAMESPACE,
        visibility_timeout_s: Annotated[
            float, typer.Option(help="A job whose worker stops heartbeating this long is run again.")
        ] = 120.0,
        backoff_s: Annotated[float, typer.Option(help="Retry n waits backoff * 2^(n-1) s.")] = 5.0,
        result_ttl_s: Annotated[float, typer.Option(help="How long results are kept.")] = 86400.0,
        name: Annotated[str | None, typer.Option(help="Worker name in logs and job records.")] = None,
    ) -> None:
        """A job worker: takes queued large-image jobs from Redis and runs them on the model."""
        from serving.worker import WorkerSettings, run_worker

        config = job_config(
            redis_url,
            s3_prefix=s3_prefix,
            inline_max_mb=inline_max_mb,
            namespace=namespace,
            visibility_timeout_s=visibility_timeout_s,
            backoff_s=backoff_s,
            result_ttl_s=result_ttl_s,
        )
        settings = WorkerSettings(
            storage_uri=storage_uri,
            device=device,
            tile=tile,
            max_output_pixels=int(max_output_mp * 1e6),
            max_stream_output_pixels=int(max_stream_output_mp * 1e6),
            scratch_dir=scratch_dir,
            http_host=http_host,
            http_port=http_port,
            name=name or f"{os.uname().nodename}-{os.getpid()}",
        )
        run_worker(config, settings)
